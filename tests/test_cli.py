"""The graphprune command: verbs end to end on timm, torchvision and HF models; one-line errors with exit code 2."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import graphprune
from graphprune.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("graphprune: error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]


def test_help_has_examples_and_every_config_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "graphprune", "shrink", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "graphprune shrink timm:resnet50" in proc.stdout
    for f in dataclasses.fields(graphprune.ShrinkConfig):
        if f.name not in ("ratio", "version"):
            assert f"--{f.name.replace('_', '-')}" in proc.stdout, f.name


def test_version_and_a_bad_flag_exit_cleanly(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and graphprune.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["shrink", "timm:test_resnet", "--ratio", "0.3", "--rond-to", "8", "--out", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--rond-to 8 (did you mean --round-to?)" in err


def test_timm_shrink_apply_and_inspect_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "small"
    code, text, err = _run(capsys, "shrink", "timm:test_resnet", "--ratio", "0.3", "--round-to", "2",
                           "--out", str(out), "--max-rows", "3")
    assert code == 0, err
    assert "more pruned (report.format(max_rows=None) lists all)" in text
    weights = load_file(out / "model.safetensors")  # plain safetensors reads the CLI's output
    model = graphprune.load_pretrained(str(out))
    assert weights.keys() <= model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    report = json.loads((out / "report.json").read_text())
    assert graphprune.count_params(model) == report["params_after"] < report["params_before"]
    again = tmp_path / "again"
    code, text, err = _run(capsys, "apply", "timm:test_resnet", str(out / "plan.json"), "--out", str(again))
    assert code == 0 and f"-> {report['params_after']:,}" in text, err
    assert graphprune.count_params(graphprune.load_pretrained(str(again))) == report["params_after"]
    code, text, err = _run(capsys, "inspect", str(out), "--html", str(tmp_path / "g.html"), "--dot",
                           str(tmp_path / "new" / "g.dot"), "--json", str(tmp_path / "g.json"))
    assert code == 0 and "prunable groups" in text, err
    assert (tmp_path / "g.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "new" / "g.dot").read_text().startswith("digraph")  # its folder was made for it


def test_torchvision_with_an_input_shape_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "tv"
    code, text, err = _run(capsys, "shrink", "torchvision:resnet18", "--ratio", "0.2", "--input-shape", "1,3,32,32",
                           "--ignore", "layer4", "--out", str(out))
    assert code == 0, err
    model = graphprune.load_pretrained(str(out))
    assert type(model).__name__ == "ResNet" and model.layer4[0].conv1.out_channels == 512
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def _tiny_llama_folder(path) -> None:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, use_cache=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)


def test_hf_folder_end_to_end(tmp_path, capsys) -> None:
    _tiny_llama_folder(tmp_path / "llama")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    save_file({"input_ids": ids}, tmp_path / "inputs.safetensors")
    for extra in ([], ["--uniform", "--round-to", "4"]):
        out = tmp_path / f"small{len(extra)}"
        code, text, err = _run(capsys, "shrink", f"hf:{tmp_path / 'llama'}", "--ratio", "0.3", "--tolerance", "0.05",
                               "--inputs", str(tmp_path / "inputs.safetensors"), "--out", str(out), *extra)
        assert code == 0, err
        assert (out / "config.json").exists() and (out / "model.safetensors").exists() and (out / "plan.json").exists()
        small = graphprune.from_pretrained(str(out))
        assert type(small).__name__ == "LlamaForCausalLM" and small(ids).logits.shape == (1, 5, 100)
        assert graphprune.count_params(small) == json.loads((out / "report.json").read_text())["params_after"]
    code, text, err = _run(capsys, "inspect", str(tmp_path / "small0"), "--limit", "2")
    assert code == 0 and "more" in text, err


@pytest.mark.parametrize("argv, match", [
    (["inspect", "timm:resnet5"], "unknown timm model 'resnet5' (did you mean resnet50"),
    (["inspect", "torchvision:resnet_18"], "unknown torchvision model 'resnet_18'"),
    (["shrink", "timm:test_resnet", "--ratio", "1.5", "--out", "{t}/OUT"], "ratio=1.5 is outside [0, 1)"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--ignore", "stem.cnv", "--out", "{t}/OUT"],
     "ignore='stem.cnv' matches no module"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--scorer", "taylor", "--out", "{t}/OUT"], "--calibration"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--scorer", "l3", "--out", "{t}/OUT"], "scorer='l3'"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--recalibrate-bn", "--out", "{t}/OUT"],
     "--recalibrate-bn re-estimates BatchNorm statistics on calibration data; pass --calibration FILE"),
    (["inspect", "timm:test_resnet", "--input-shape", "1,3,x"], "--input-shape '1,3,x' must be positive"),
    (["inspect", "timm:test_resnet", "--input-shape", "1,5"], "does not run on the example inputs"),
    (["inspect", "{t}/NOTES"], "is a file; a model is timm:NAME"),
    (["inspect", "{t}/MISSING"], "no such folder"),
    (["inspect", "hf:{t}/MISSING"], "no such folder"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--out", "{t}/NOTES/sub"], "is a file, not a folder"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--out", "{t}/NOTES"], "is a file; pass a folder"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--out", "{t}/FULL"], "already holds files"),
    (["inspect", "timm:test_resnet", "--html", "{t}/FULL"], "is a folder; pass a file name"),
    (["inspect", "timm:test_resnet", "--json", ""], "--json is empty; pass the file to write"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--out", ""], "--out is empty; pass the folder to write"),
    (["shrink", "timm:test_resnet", "--ratio", "0.3", "--out", "/proc/OUT"], "--out /proc/OUT: cannot write into /proc"),
    (["apply", "timm:test_resnet", "{t}/NOTES", "--out", "{t}/OUT"], "is not valid JSON"),
    (["apply", "timm:test_resnet", "{t}/PLAN", "--out", "{t}/OUT"], "the plan was made for another model"),
    (["inspect", "class:no_such_module:Net"], "cannot find the model class"),
    (["inspect", "class:torch.nn:Linear"], "cannot build class:torch.nn:Linear: Linear.__init__() missing 2 required"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, match) -> None:
    (tmp_path / "NOTES").write_text("not a model")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "x").write_text("")
    plan = graphprune.Plan((), {}, {}, 1, 1, fingerprint="0123456789abcdef", model_class="Other")
    plan.to_json(str(tmp_path / "PLAN"))
    code, _, err = _run(capsys, *(a.format(t=tmp_path) for a in argv))
    _one_line_error(code, err, match)
    assert not (tmp_path / "OUT").exists()  # checks come before any output


@pytest.mark.parametrize("argv", [["--debug", "inspect", "timm:resnet5"], ["inspect", "timm:resnet5", "--debug"]])
def test_debug_shows_the_traceback(capsys, argv) -> None:
    # after the command too: that is where a user adds it when an error says to rerun with it
    with pytest.raises(graphprune.LoadError):
        main(argv)


def test_graphprune_warnings_are_one_line(tmp_path, capsys) -> None:
    save_file({"0": torch.randn(4, 3, 32, 32)}, tmp_path / "calib.safetensors")
    code, _, err = _run(capsys, "shrink", "timm:test_resnet", "--ratio", "0.2", "--calibration",
                        str(tmp_path / "calib.safetensors"), "--out", str(tmp_path / "out"))
    assert code == 0
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("graphprune: warning: ")]
    assert "calibration= was given but scorer='l2'" in err


def test_recalibrate_bn_flag_re_estimates_on_the_calibration_file(tmp_path, capsys) -> None:
    save_file({"0": torch.randn(16, 3, 32, 32)}, tmp_path / "calib.safetensors")  # two batches of 8
    code, _, err = _run(capsys, "shrink", "timm:test_resnet", "--ratio", "0.2", "--calibration",
                        str(tmp_path / "calib.safetensors"), "--recalibrate-bn", "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "calibration= was given" not in err  # the file is read, for the statistics
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("BatchNorm running statistics of" in n for n in report["notes"]), report["notes"]
