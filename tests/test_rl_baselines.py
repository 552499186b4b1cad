"""The RL baselines benchmark runs to its end at its smallest settings, and its oracle is a real upper reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import rl_baselines  # noqa: E402

from view_env.vector import ViewTransformVectorEnv  # noqa: E402


@pytest.fixture(scope="module")
def level_shapes(tmp_path_factory) -> Path:
    """A 64 + 32 image Shapes set whose splits both hold circles large enough for the easy level (10 and 7)."""
    from view_env.data.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes") / "levels", num_train=64, num_val=32, image_size=64, seed=1,
                        workers=1, progress=False)


def test_smallest_settings_print_the_table_and_write_the_plot(level_shapes, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    code = rl_baselines.main(["--steps", "64", "--seeds", "1", "--num-envs", "4", "--eval-episodes", "4",
                              "--curve-points", "2", "--levels", "easy", "hard", "--shapes-root", str(level_shapes),
                              "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| level")}
    assert set(rows) == {(level, method) for level in ("easy", "hard")
                         for method in ("random", "oracle", "ppo", "a2c", "dqn", "torch-ppo")}
    for (_, method), line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert 0.0 <= float(cells[2].split(" ± ")[0]) <= 1.0  # success rate
        if method in rl_baselines.ALGORITHMS:
            assert int(cells[5].replace(",", "")) >= 64  # training steps
            assert float(cells[6].replace(",", "")) > 0  # steps per second of the training loop
        else:
            assert cells[5] == "0" and cells[6] == "n/a"
    # Episodes of the easy level end by its 4-step limit at the latest.
    assert all(float(rows[("easy", m)].split("|")[5].split(" ± ")[0]) <= 4.0 for m in ("random", "oracle"))
    assert plot.stat().st_size > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_ppo_curve_starts_at_step_zero_and_ends_at_the_budget(level_shapes):
    args = rl_baselines.RLArgs(steps=128, seeds=1, num_envs=4, eval_episodes=4, curve_points=2,
                               shapes_root=str(level_shapes))
    train, val = rl_baselines.load_banks(args)
    result = rl_baselines.run_one("easy", "torch-ppo", 0, train, val, args)
    assert result.curve[0][0] == 0 and result.curve[-1][0] == result.steps
    assert [s for s, _ in result.curve] == sorted(s for s, _ in result.curve)
    assert 0 < result.train_seconds < result.wall  # evaluations are left out of the loop's time


def test_oracle_beats_random(tiny_shapes):
    val = rl_baselines.load_bank(str(tiny_shapes), "val", None, 128)
    oracle = rl_baselines.evaluate(rl_baselines.oracle_policy, val, 128, 64, seed=0, level="hard")
    uniform = rl_baselines.evaluate(lambda venv: rl_baselines.random_policy(venv.action_space.n, seed=0), val, 128,
                                    64, seed=0, level="hard")
    assert oracle.success >= uniform.success + 0.5, (oracle, uniform)
    assert oracle.ret == pytest.approx(oracle.success)  # the only reward ends a successful episode
    assert oracle.length < uniform.length


def test_oracle_scores_every_geometric_action_in_one_batch(tiny_shapes):
    env = ViewTransformVectorEnv(8, root=str(tiny_shapes), split="val", task="search", obs_mode="dict",
                                 progress=False)
    env.reset(seed=3)
    before = env.state
    actions = rl_baselines.oracle_actions(env)
    assert actions.shape == (8,) and actions.dtype == torch.int64
    assert bool(((actions >= 0) & (actions < 9)).all())  # geometric moves only
    assert env.state is before  # reads the state, changes nothing
    # Following the oracle from these starts ends most episodes by success well before the step limit.
    successes = np.zeros(8, dtype=bool)
    for _ in range(16):
        _, reward, terminated, _, _ = env.step(rl_baselines.oracle_actions(env))
        successes |= (terminated & (reward > 0)).numpy()
    assert successes.mean() >= 0.5


@pytest.mark.slow
def test_worker_processes_give_the_results_of_one_process(tiny_shapes, tmp_path, capsys):
    common = ["--steps", "64", "--seeds", "1", "--num-envs", "4", "--eval-episodes", "4", "--curve-points", "2",
              "--algos", "a2c", "dqn", "--levels", "hard", "--shapes-root", str(tiny_shapes), "--plot",
              str(tmp_path / "curves.png")]
    assert rl_baselines.main([*common, "--json", str(tmp_path / "one.json")]) == 0
    assert rl_baselines.main([*common, "--workers", "2", "--json", str(tmp_path / "two.json")]) == 0
    assert "in 2 worker processes" in capsys.readouterr().out

    def outcomes(name: str) -> list[tuple]:
        runs = json.loads((tmp_path / name).read_text())["runs"]
        return [(r["level"], r["method"], r["seed"], r["final"], r["steps"], r["curve"]) for r in runs]

    one = outcomes("one.json")
    assert [(method, seed) for _, method, seed, *_ in one] == [("random", 0), ("oracle", 0), ("a2c", 0), ("dqn", 0)]
    assert outcomes("two.json") == one  # a run depends on its method and seed, not on where it ran


def test_bad_worker_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        rl_baselines.main(["--workers", "0"])
    assert "--workers 0 is invalid: expected an integer >= 1" in capsys.readouterr().err


def test_write_docs_replaces_only_its_own_section(tmp_path, monkeypatch):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nbefore\n\n{rl_baselines.START}\nold table\n{rl_baselines.END}\n\nafter\n")
    monkeypatch.setattr(rl_baselines, "DOCS", docs)
    results = [rl_baselines.RunResult("easy", method, seed,
                                      rl_baselines.Evaluation(rate + seed / 100, rate + seed / 100, 9.0), steps, 1.0,
                                      0.5 if steps else 0.0)
               for seed in range(2)
               for method, rate, steps in (("random", 0.1, 0), ("oracle", 0.9, 0), ("ppo", 0.5, 128))]
    rows = rl_baselines.summarise(results, ["random", "oracle", "ppo"], ["easy"])
    args = argparse.Namespace(steps=128, images=None, num_envs=4, obs_size=64, eval_episodes=8, seeds=2, workers=2,
                              threads=1, levels=["easy"], json=rl_baselines.ROOT / "docs" / "results" / "rl.json")
    rl_baselines.write_docs(rl_baselines.render_table(rows), rows, tmp_path / "figures" / "curves.png", 12.0,
                            "--steps 128 --workers 2 --write-docs", args)
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and text.count(rl_baselines.START) == 1
    assert "`python benchmarks/rl_baselines.py --steps 128 --workers 2 --write-docs`" in text
    assert "runs 2 at a time, each with 1 torch thread(s)" in text
    assert "Raw per-run results and learning curves: `docs/results/rl.json`." in text
    assert "| easy | ppo | 0.505 ± 0.007 |" in text  # mean and sample std of 0.50 and 0.51
    assert "| 128 | 256 | 1 | 2 |" in text  # 128 steps in 0.5 s of training loop
    assert "**easy**: random 10.5%, oracle 90.5%; PPO 50.5% (+40.0 points over random, 50% of the random-to-oracle " \
           "gap)" in text
    assert "![success rate during training](figures/curves.png)" in text


def test_json_that_is_a_directory_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rl_baselines.main(["--json", str(tmp_path)])
    assert f"--json {tmp_path} is invalid: expected a file path, not a directory" in capsys.readouterr().err


def test_levels_numbers_are_written_into_the_environment_card(tmp_path, monkeypatch):
    envs = tmp_path / "envs.md"
    envs.write_text(f"card\n{rl_baselines.LEVELS_START}\nold\n{rl_baselines.LEVELS_END}\nrest\n")
    monkeypatch.setattr(rl_baselines, "ENVS_DOC", envs)
    results = [rl_baselines.RunResult(level, method, seed, rl_baselines.Evaluation(rate, rate, 3.0), 0, 1.0)
               for seed in range(2) for level in ("easy", "hard")
               for method, rate in (("random", 0.4 if level == "easy" else 0.1), ("oracle", 0.9),
                                    ("torch-ppo", 0.6 + seed / 10))]
    rows = rl_baselines.summarise(results, ["random", "oracle", "torch-ppo"], ["easy", "hard"])
    rl_baselines.write_levels(rows, "a test", 50_000, 2)
    text = envs.read_text()
    assert text.startswith("card\n") and text.endswith("\nrest\n") and "old" not in text
    assert "| level | random | torch PPO | oracle |" in text
    assert "| `easy` | 0.400 ± 0.000 | 0.650 ± 0.071 | 0.900 ± 0.000 |" in text
    assert "after 50,000 training steps (mean ± sample std over 2 seeds; a test" in text
