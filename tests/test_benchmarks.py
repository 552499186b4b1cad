"""The benchmark scripts run to their end at their smallest settings; their shared helpers; bad flags named."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import common  # noqa: E402
import env_throughput  # noqa: E402


def test_env_throughput_smallest_settings(tiny_shapes, capsys):
    code = env_throughput.main(["--num-envs", "2", "--obs-sizes", "64", "--seconds", "0.01", "--images", "8",
                                "--max-async", "2", "--split-envs", "2", "--shapes-root", str(tiny_shapes)])
    out = capsys.readouterr().out
    assert code == 0
    for actions in env_throughput.ACTION_SETS:
        row = next(line for line in out.splitlines() if line.startswith(f"| 64 | 2 | {actions} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c not in ("", "nan", "n/a") for c in cells)
        assert float(cells[7].rstrip("x")) > 0  # view_env vs sync
        for num_envs in (1, 2):  # the step split: every part timed, the parts within the step
            split = next(line for line in out.splitlines()
                         if line.startswith(f"| 64 | {num_envs} | {actions} |") and line.count("|") == 10)
            step, *parts = (float(c) for c in split.strip("|").split("|")[3:])
            assert step > 0 and all(p >= 0 for p in parts[:-1])


def test_minimal_pil_env_has_geometric_actions_only(tiny_shapes):
    from view_env.data import ImageBank, ShapesDataset

    bank = ImageBank.from_dataset(ShapesDataset(str(tiny_shapes)), canvas_size=64, progress=False)
    minimal, full = env_throughput.pil_factory(bank, 32, augment=False)(), env_throughput.pil_factory(bank, 32)()
    assert minimal.action_space.n == 9 and full.action_space.n == 16
    obs, _ = minimal.reset(seed=0)
    for action in range(9):
        obs, *_ = minimal.step(action)
    assert obs.shape == (3, 32, 32) and obs.dtype == np.uint8


def test_commit_is_dirty_for_code_changes_but_not_for_the_docs_benchmarks_write(tmp_path):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("table\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    clean = common.commit(tmp_path)
    assert len(clean) >= 7 and "uncommitted" not in clean
    (tmp_path / "docs" / "benchmarks.md").write_text("new table\n")  # what --write-docs does during the run
    assert common.commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.commit(tmp_path) == clean + " (with uncommitted changes)"


def test_probe_summary_against_hand_computed_means_and_spreads(tmp_path, capsys):
    import json

    import probe_summary

    runs = []
    for i, (pretrained, random) in enumerate(((0.40, 0.20), (0.42, 0.21), (0.44, 0.22))):
        run = tmp_path / f"seed{i}"
        run.mkdir()
        (run / "probe.json").write_text(json.dumps({
            "pretrained": {"box_top1": pretrained, "count_mae": 1.0 + i / 10, "knn_top1": 0.13},
            "random init": {"box_top1": random, "count_mae": 1.5, "knn_top1": 0.12 + i / 100}}))
        runs.append(run)
    summary = probe_summary.summarise(probe_summary.load(runs))
    assert summary["pretrained"]["box_top1"] == pytest.approx((0.42, 0.02))
    assert summary["random init"]["knn_top1"] == pytest.approx((0.13, 0.01))
    lines = probe_summary.verdicts(summary)
    # box: +0.21 beyond hypot(0.02, 0.01); count MAE (lower better): +0.4 beyond 0.1; k-NN: 0.0, not beyond 0.01.
    assert lines == ["pretrained vs random init: better beyond the seed spread on 2 of 3 probes (box_top1 +0.210, "
                     "count_mae +0.400); not on: knn_top1 +0.000."]
    assert probe_summary.main([str(r) for r in runs]) == 0
    assert "| pretrained | 0.420 ± 0.020 |" in capsys.readouterr().out
    (runs[1] / "probe.json").write_text("[1, 2]")
    with pytest.raises(SystemExit):
        probe_summary.main([str(r) for r in runs])
    assert "is not a probe table" in capsys.readouterr().err


def test_write_section_replaces_its_markers_or_appends_a_heading(tmp_path):
    docs = tmp_path / "benchmarks.md"
    common.write_section(docs, "<!-- a:start -->", "<!-- a:end -->", "<!-- a:start -->\none\n<!-- a:end -->", "A")
    assert docs.read_text() == "# Benchmarks\n\n## A\n\n<!-- a:start -->\none\n<!-- a:end -->\n"
    docs.write_text(docs.read_text() + "\nafter\n")
    common.write_section(docs, "<!-- a:start -->", "<!-- a:end -->", "<!-- a:start -->\ntwo\n<!-- a:end -->", "A")
    assert docs.read_text() == "# Benchmarks\n\n## A\n\n<!-- a:start -->\ntwo\n<!-- a:end -->\n\nafter\n"
    common.write_section(docs, "<!-- b:start -->", "<!-- b:end -->", "<!-- b:start -->\nb\n<!-- b:end -->", "B",
                         intro="What B is.\n")
    assert docs.read_text().endswith("after\n\n## B\n\nWhat B is.\n\n<!-- b:start -->\nb\n<!-- b:end -->\n")


def test_render_speed_main_returns_an_exit_status(capsys):
    import render_speed

    assert render_speed.main(["--batches", "2", "--sizes", "16", "--images", "2", "--min-time", "0.001",
                              "--no-stock"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 | 128 | 2 |"))
    assert row.count("|") == 14


def test_coverage_speed_prints_a_row_per_setting(capsys):
    import coverage_speed

    assert coverage_speed.main(["--num-envs", "3", "--boxes", "2", "5", "--repeats", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["2", "5"]
    assert all(float(row.split("|")[5]) > 0 for row in rows)


@pytest.mark.parametrize("script, argv, message", [
    ("coverage_speed", ["--boxes", "0"], "--boxes [0] is invalid: expected integers >= 1"),
    ("coverage_speed", ["--grid", "1"], "--grid 1 is invalid: expected an integer >= 2"),
    ("env_throughput", ["--images", "0"], "--images 0 is invalid: expected an integer >= 1"),
    ("env_throughput", ["--seconds", "0"], "--seconds 0.0 is invalid: expected a number > 0"),
    ("env_throughput", ["--num-envs", "4", "0"], "--num-envs [4, 0] is invalid: expected integers >= 1"),
    ("render_speed", ["--min-time", "-1"], "--min-time -1.0 is invalid"),
    ("render_speed", ["--sizes", "0"], "--sizes [0] is invalid"),
    ("probe_summary", [], "the following arguments are required: runs"),
    ("rl_baselines", ["--obs-size", "8"], "--obs-size 8 is invalid: expected at least 36 pixels"),
    ("rl_baselines", ["--images", "0"], "--images 0 is invalid"),
    ("rl_baselines", ["--curve-points", "0"], "--curve-points 0 is invalid"),
    ("pretrain_table", ["--seeds", "0"], "--seeds 0 is invalid: expected an integer >= 1"),
    ("pretrain_table", ["--steps", "0"], "--steps 0 is invalid"),
    ("pretrain_table", ["--probe-train-images", "0"], "--probe-train-images 0 is invalid"),
    ("pretrain_table", ["--probe-val-images", "0"], "--probe-val-images 0 is invalid"),
    ("pretrain_table", ["--rows", "simclr,nope"], "--rows 'simclr,nope' is invalid"),
    ("pretrain_table", ["--set", "gamma"], "--set 'gamma' is invalid: expected FIELD=VALUE"),
    ("pretrain_table", ["--set", "seed=3"], "--set 'seed=3' is invalid: expected a field other than seed"),
    ("pretrain_table", ["--set", "lr=fast"], "--set 'lr=fast' is invalid"),
    ("pretrain_table", ["--set", "obs_size=0"], "--set obs_size=...: --obs-size 0 is invalid"),
    ("pretrain_table", ["--buffer-size", "0"], "--buffer-size 0 is invalid"),
])
def test_each_invalid_value_names_its_own_flag(script, argv, message, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_torch_ppo_runs_at_a_tiny_budget(tiny_shapes, capsys):
    """benchmarks/ppo.py end to end: a rollout, GAE and an update at a tiny budget, every tensor on the device."""
    import ppo

    args = ppo.PPOArgs(total_timesteps=64, num_envs=4, num_steps=8, obs_size=36, num_minibatches=2,
                       update_epochs=2)
    result = ppo.train(args, root=str(tiny_shapes), split="train", progress=False, max_episode_steps=4)
    assert result["steps"] == 64 and result["steps_per_second"] > 0
    assert result["episodes"] >= 4 and 0.0 <= result["success_rate"] <= 1.0
    assert len(result["history"]) == 2 and all(np.isfinite(list(h.values())).all() for h in result["history"])
    assert all(p.device.type == "cpu" for p in result["agent"].parameters())


def test_gae_against_a_python_loop():
    import ppo

    g = torch.Generator().manual_seed(0)
    t, n = 5, 3
    rewards, values = torch.rand(t, n, generator=g), torch.rand(t, n, generator=g)
    dones = (torch.rand(t, n, generator=g) < 0.3).float()
    next_value, next_done = torch.rand(n, generator=g), torch.tensor([0.0, 1.0, 0.0])
    got = ppo.advantages(rewards, values, dones, next_value, next_done, 0.9, 0.8)
    for env in range(n):
        running = 0.0
        for step in reversed(range(t)):
            if step == t - 1:
                following, alive = float(next_value[env]), 1 - float(next_done[env])
            else:
                following, alive = float(values[step + 1, env]), 1 - float(dones[step + 1, env])
            delta = float(rewards[step, env]) + 0.9 * following * alive - float(values[step, env])
            running = delta + 0.9 * 0.8 * alive * running
            assert abs(float(got[step, env]) - running) < 1e-5


def test_gvf_step_compares_a_step_with_its_encoder_passes(tiny_shapes, capsys):
    import gvf_step

    assert gvf_step.main(["--steps", "1", "--buffer-size", "64", "--batch-size", "16", "--root",
                          str(tiny_shapes)]) == 0
    out = capsys.readouterr().out
    assert "shapes-labels-cpu: batch 16" in out and "ratio" in out
    ratio = float(out.split("ratio ")[1].split()[0])
    assert ratio > 0


def test_dino_collapse_smallest_run_and_its_same_view_check(tiny_shapes, tmp_path, capsys):
    import json

    import dino_collapse

    from agents import pretrain

    sample = pretrain._sample
    out = tmp_path / "collapse.json"
    assert dino_collapse.main(["--variants", "same-view", "--steps", "10", "--root", str(tiny_shapes),
                               "--out-dir", str(tmp_path / "runs"), "--json", str(out)]) == 0
    assert pretrain._sample is sample  # the same-view check puts the sampler back
    result = json.loads(out.read_text())["results"][0]
    assert result["variant"] == "same-view" and result["log_k"] == pytest.approx(np.log(256))
    assert -1.0 <= result["cosine"] <= 1.0 and 0 < result["teacher_entropy"] <= result["log_k"] + 1e-6
    assert 1 <= result["prototypes_used"] <= 256 and "same-view" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dino_collapse.main(["--variants", "no-such-variant"])
    assert "--variants ['no-such-variant'] is invalid" in capsys.readouterr().err


def test_clip_collapse_smallest_run(tiny_shapes, tmp_path, capsys):
    import json

    import clip_collapse

    from agents import pretrain

    step = pretrain._Learner.step
    out = tmp_path / "collapse.json"
    assert clip_collapse.main(["--variants", "lr-5e-4-crops-only", "--steps", "10", "--root", str(tiny_shapes),
                               "--out-dir", str(tmp_path / "runs"), "--json", str(out)]) == 0
    assert pretrain._Learner.step is step  # the trace puts the learner's step back
    result = json.loads(out.read_text())["results"][0]
    assert result["variant"] == "lr-5e-4-crops-only" and result["log_b"] == pytest.approx(np.log(256))
    assert result["early_step"] == 9 and set(result["early"]) == {"view_cosine", "caption_cosine"}
    for value in (result["view_cosine"], result["caption_cosine"], *result["early"].values()):
        assert -1.0 <= value <= 1.0
    assert 0.0 <= result["image_to_caption_top1"] <= 1.0 and result["pairs"] >= 2
    assert "lr-5e-4-crops-only" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        clip_collapse.main(["--variants", "no-such-variant"])
    assert "--variants ['no-such-variant'] is invalid" in capsys.readouterr().err


def test_probe_summary_reads_the_probe_commands_output(tmp_path, capsys):
    """``python -m agents.probe --out`` files (scores under ``scores``, the first row named after the encoder) are
    summarised like the pretrainer's probe.json, the first row compared with the others."""
    import json

    import probe_summary

    files = []
    for i, (probed, random) in enumerate(((0.30, 0.20), (0.32, 0.20), (0.34, 0.20))):
        path = tmp_path / f"probe-seed{i}.json"
        path.write_text(json.dumps({"source": {"checkpoint": "x"}, "protocol": {"seed": i}, "scores": {
            "checkpoint": {"box_top1": probed}, "random init": {"box_top1": random}}}))
        files.append(path)
    summary = probe_summary.summarise(probe_summary.load(files))
    assert summary["checkpoint"]["box_top1"] == pytest.approx((0.32, 0.02))
    assert probe_summary.verdicts(summary) == ["checkpoint vs random init: better beyond the seed spread on 1 of 1 "
                                               "probes (box_top1 +0.120); not on: none."]
    assert probe_summary.main([str(f) for f in files]) == 0
    assert "| checkpoint | 0.320 ± 0.020 |" in capsys.readouterr().out
