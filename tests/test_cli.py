"""The command line as a user meets it: check-data, log, aer; exit status 2 on user errors."""

import json
import os
import shutil

import pytest
from conftest import run_cli, tiny_config, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_check_data_on_the_bundled_corpus():
    proc = run_cli("check-data", "--config", "config/quickstart.yml", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 20000 sentence pairs" in proc.stdout
    assert "eval: 500 sentence pairs" in proc.stdout
    assert "218248 links" in proc.stdout


def _corrupt(corpus, tmp_path, name, change):
    path = corpus[name]
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(change(content))
    config = write_config(tmp_path / "run.yml", tiny_config(corpus, tmp_path / "run"))
    return run_cli("check-data", "--config", config)


def _drop_line(number):
    def change(content):
        lines = content.split(b"\n")
        return b"\n".join(lines[: number - 1] + lines[number:])

    return change


def _append_to_line(number, suffix):
    def change(content):
        lines = content.split(b"\n")
        lines[number - 1] += suffix
        return b"\n".join(lines)

    return change


@pytest.mark.parametrize(
    "name, change, expected",
    [
        ("train.tgt", _drop_line(7), ["train.tgt", "train.src", "239", "240"]),
        ("train.align", _append_to_line(3, b" 42-0"), ["train.align", "line 3", "42-0"]),
        ("train.align", _append_to_line(1, b" 1:2"), ["train.align", "line 1", "1:2"]),
        ("train.src", _append_to_line(2, b" \xff"), ["train.src", "line 2", "UTF-8"]),
    ],
)
def test_check_data_errors(corpus, tmp_path, name, change, expected):
    proc = _corrupt(corpus, tmp_path, name, change)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    for part in expected:
        assert part in message, message


def test_crlf_and_bom_are_accepted_the_same_way(corpus, tmp_path):
    clean = run_cli(
        "check-data",
        "--config",
        write_config(tmp_path / "a.yml", tiny_config(corpus, tmp_path / "a")),
    )
    for name in ("train.src", "train.tgt", "train.align"):
        with open(corpus[name], "rb") as f:
            content = f.read()
        with open(corpus[name], "wb") as f:
            f.write(b"\xef\xbb\xbf" + content.replace(b"\n", b"\r\n"))
    dirty = run_cli(
        "check-data",
        "--config",
        write_config(tmp_path / "b.yml", tiny_config(corpus, tmp_path / "b")),
    )
    assert clean.returncode == dirty.returncode == 0, dirty.stderr[-2000:]
    assert clean.stdout.replace(str(tmp_path / "a"), "") == dirty.stdout.replace(
        str(tmp_path / "b"), ""
    )


def test_log_table_from_metrics_and_from_a_captured_log(tmp_path):
    records = [
        {
            "kind": "train",
            "step": 100,
            "loss": 3.5,
            "ce": 3.25,
            "alignment": 1.5,
            "learning_rate": 2.5e-4,
            "tokens_per_sec": 4000.0,
        },
        {"kind": "eval", "step": 100, "bleu": 12.5, "aer": 30.25},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    proc = run_cli("log", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    assert header.split() == ["step", "loss", "CE", "align", "lr", "tok/s", "dev_bleu", "dev_aer"]
    assert row.split() == [
        "100",
        "3.5000",
        "3.2500",
        "1.5000",
        "2.50e-04",
        "4000",
        "12.5000",
        "30.2500",
    ]
    log = tmp_path / "train.log"
    log.write_text(
        "2024-01-01 12:00:00.000000: I runner.py:310] Step = 200 ; steps/s = 2.45, tokens/s = "
        "40123 (19560 source, 20563 target) ; Learning rate = 0.000025 ; Loss = 3.386743\n"
    )
    proc = run_cli("log", str(log))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[1].split() == [
        "200",
        "3.3867",
        "-",
        "-",
        "2.50e-05",
        "40123",
    ]


def test_log_of_a_missing_run_is_a_user_error(tmp_path):
    proc = run_cli("log", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_aer_command(tmp_path):
    (tmp_path / "gold").write_text("0-0 1p1 2-2\n0-1\n")
    (tmp_path / "hyp").write_text("0-0 1-1 2-1\n0-1\n")
    proc = run_cli(
        "aer", "--reference", str(tmp_path / "gold"), "--hypothesis", str(tmp_path / "hyp")
    )
    assert proc.returncode == 0, proc.stderr
    # A = 4 links; S = {0-0, 2-2, 0-1}: 2 hits; P = S + {1-1}: 3 hits -> AER = 1 - 5/7.
    assert proc.stdout.startswith("AER = 28.57 ; Precision = 75.00 ; Recall = 66.67")


def test_unknown_subcommand_and_missing_config_exit_2(tmp_path):
    assert run_cli("frobnicate").returncode == 2
    proc = run_cli("train", "--config", str(tmp_path / "missing.yml"))
    assert proc.returncode == 2 and "missing.yml" in proc.stderr and "Traceback" not in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_log_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    records = [
        {"kind": "train", "step": s, "loss": 4.0 / s, "ce": 3.5 / s, "alignment": 1.0 / s}
        for s in (1, 2, 3)
    ] + [{"kind": "eval", "step": 3, "bleu": 20.0, "aer": 30.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    png = tmp_path / "curves.png"
    proc = run_cli("log", str(tmp_path), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
