"""benchmarks/pretrain_table.py runs to its end at its smallest settings, writes its JSON and PNG, and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import pretrain_table  # noqa: E402

from agents.pretrain import native_cpu_bf16  # noqa: E402

TINY = ["--set", "obs_size=32", "embed_dim=32", "value_depth=1", "value_dim=32",
        "num_next_actions=4", "batch_size=8", "num_envs=4", "--buffer-size", "64", "--steps", "2", "--seeds", "1"]


def test_smallest_run_writes_table_json_png_and_resumes(tiny_shapes, tmp_path, capsys, monkeypatch):
    results, figure, out_dir = tmp_path / "table.json", tmp_path / "table.png", tmp_path / "runs"
    common = ["--shapes-root", str(tiny_shapes), "--out-dir", str(out_dir), "--plot", str(figure), *TINY]
    heads = iter(f"head{i}" for i in range(100))  # HEAD moves on every call: a commit made while the table runs
    monkeypatch.setattr(pretrain_table, "commit", lambda: next(heads))
    assert pretrain_table.main([*common, "--rows", "random-init,colour-grid,chance,ab-simclr", "--json",
                                str(results)]) == 0
    out = capsys.readouterr().out
    assert "| row | seeds | presence mAP |" in out
    table_rows = [line for line in out.splitlines() if line.startswith("| random init |")
                  or line.startswith("| AB-SimCLR |") or line.startswith("| colour-grid floor |")
                  or line.startswith("| chance (image-blind) |")]
    assert len(table_rows) == 4
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = json.loads(results.read_text())
    assert set(first["runs"]) == {"random-init", "colour-grid", "chance", "ab-simclr"}
    # The chance row is agents.probe.chance_scores of the seed's probe data: image-blind, in [0, 1] but count MAE.
    chance = first["runs"]["chance"]["0"]["probes"]
    assert set(chance) == set(pretrain_table.PROBES) and chance["attn_box_top1"] == chance["box_top1"]
    assert all(0 <= v <= 1 for k, v in chance.items() if k != "count_mae") and chance["count_mae"] > 0
    run = first["runs"]["ab-simclr"]["0"]
    assert run["steps"] == 2 and set(run["probes"]) == set(pretrain_table.PROBES)
    assert run["precision"] == ("bf16" if native_cpu_bf16() else "float32")  # bf16 autocast only where native
    assert run["overrides"] == {"annotations": "views", "bootstrap_weight": 1.0,
                                "augmentations": [*pretrain_table.DEFAULT_AUGMENTATIONS, "grayscale"]}
    assert set(pretrain_table.DIAGNOSTICS) <= set(run["diagnostics"])
    # The run's TensorBoard curves, read back into the JSON, and drawn beside the table.
    assert set(run["curves"]) == set(pretrain_table.CURVE_TAGS)
    assert [step for step, _ in run["curves"]["loss/base"]] == [0, 1]
    assert run["curves"]["bootstrap/uniform"][0][1] == pytest.approx(run["diagnostics"]["uniform"], rel=1e-5)
    assert (tmp_path / "pretrain_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "curves" not in first["runs"]["random-init"]["0"]  # an untrained row has none
    assert first["settings"]["config"]["total_steps"] == 2
    # Every run, and the invocation, name the commit whose code was loaded when it started, not a later HEAD.
    assert {r["0"]["commit"] for r in first["runs"].values()} == {"head0"}
    assert [i["commit"] for i in first["invocations"]] == ["head0"]
    assert "Above the colour-grid floor on every probe" in out and "Above the chance (image-blind) on every" in out

    # A JSON written before crop_area existed ran log-uniform views (agents.config.LEGACY_DEFAULTS): resuming it
    # under today's uniform law is refused by name.
    legacy = json.loads(results.read_text())
    del legacy["settings"]["config"]["crop_area"]
    results.write_text(json.dumps(legacy))
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "random-init", "--resume-json", str(results)])
    assert "crop_area differ" in capsys.readouterr().err
    # A JSON written before another config field existed resumes: the missing field takes its default.
    older = json.loads(results.read_text())
    older["settings"]["config"]["crop_area"] = "uniform"
    del older["settings"]["config"]["target_network"]
    assert "bf16" not in older["settings"]["config"]  # how a run executes is not a setting: JSONs before held it
    older["settings"]["config"]["bf16"] = True
    results.write_text(json.dumps(older))
    # Resume with one more row: the finished runs are skipped and kept as they were; only the new row runs, here
    # in float32 whatever the CPU (the precision is recorded per run, not a setting the JSON must match).
    assert pretrain_table.main([*common, "--rows", "random-init,colour-grid,chance,ab-simclr,labels",
                                "--resume-json", str(results), *TINY[:TINY.index("--buffer-size")],
                                "bf16=false"]) == 0
    out = capsys.readouterr().out
    assert "skip random-init seed 0" in out and "skip ab-simclr seed 0" in out
    assert "1 runs:" in out and "labels seed 0" in out
    second = json.loads(results.read_text())
    assert second["runs"]["labels"]["0"]["precision"] == "float32"
    assert second["runs"]["ab-simclr"] == first["runs"]["ab-simclr"]
    assert second["runs"]["random-init"] == first["runs"]["random-init"]
    assert set(second["runs"]) == {"random-init", "colour-grid", "chance", "ab-simclr", "labels"}
    assert len(second["invocations"]) == 2
    assert "| labels base |" in out

    # Floors probed on another machine are probed here too once a run of their seed is probed here.
    moved = json.loads(results.read_text())
    for row in ("random-init", "colour-grid"):
        moved["runs"][row]["0"]["machine"] = "Another CPU, 2 cores"
    results.write_text(json.dumps(moved))
    assert pretrain_table.main([*common, "--rows", "random-init,ab-simclr", "--resume-json", str(results)]) == 0
    out = capsys.readouterr().out
    assert "random-init seed 0 probed on this machine too" in out and "colour-grid seed 0 probed on" in out
    here = json.loads(results.read_text())
    for row in ("random-init", "colour-grid"):
        held = here["runs"][row]["0"]
        assert held["machine"] == "Another CPU, 2 cores" and held["probes"] == second["runs"][row]["0"]["probes"]
        (again,) = held["by_machine"].values()  # this machine's probes: the same encoder, the same probes
        assert again["probes"] == held["probes"] and again["commit"] and again["probe_seconds"] > 0
    assert "| random init, probed on" in out and "Probed on more than one machine" in out
    # --reprobe of a trained run probes this machine's floors of its seed again (their probes may be stale too).
    assert pretrain_table.main([*common, "--rows", "ab-simclr", "--resume-json", str(results), "--reprobe"]) == 0
    assert "random-init seed 0 probed on this machine too" in capsys.readouterr().out
    # A row whose recipe changed since its runs were trained refuses them.
    changed = json.loads(results.read_text())
    changed["runs"]["ab-simclr"]["0"]["overrides"] = {"annotations": "views", "bootstrap_weight": 1.0}
    results.write_text(json.dumps(changed))
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "ab-simclr", "--resume-json", str(results)])
    assert "the runs of row 'ab-simclr' were trained with other overrides" in capsys.readouterr().err
    results.write_text(json.dumps(second))

    # --reprobe probes the held runs again from their checkpoints and keeps their training results.
    stale = json.loads(results.read_text())
    for row in ("ab-simclr", "random-init"):
        stale["runs"][row]["0"]["probes"] = dict.fromkeys(pretrain_table.PROBES, -1.0)
    results.write_text(json.dumps(stale))
    assert pretrain_table.main([*common, "--rows", "random-init,ab-simclr", "--resume-json", str(results),
                                "--reprobe"]) == 0
    out = capsys.readouterr().out
    assert "probe again ab-simclr seed 0" in out and "0 runs and 2 probed again:" in out
    third = json.loads(results.read_text())
    for row in ("ab-simclr", "random-init"):
        again = third["runs"][row]["0"]
        assert again["probes"] == second["runs"][row]["0"]["probes"]  # the same checkpoint, the same probes
        assert again["commit"] == second["runs"][row]["0"]["commit"] and "reprobed" in again
    assert third["runs"]["ab-simclr"]["0"]["train_seconds"] == second["runs"]["ab-simclr"]["0"]["train_seconds"]
    assert third["invocations"][-1]["runs"] == 0 and third["invocations"][-1]["reprobed"] == 2
    # Without the checkpoints, or without a JSON to probe again, it says so.
    with pytest.raises(SystemExit):
        pretrain_table.main([*common[:2], "--out-dir", str(tmp_path / "elsewhere"), *common[4:], "--rows",
                             "ab-simclr", "--resume-json", str(results), "--reprobe"])
    assert "does not exist" in capsys.readouterr().err
    swapped = tmp_path / "swapped" / "ab-simclr"
    swapped.mkdir(parents=True)
    (swapped / "seed0").symlink_to(out_dir / "labels" / "seed0")  # another row's checkpoint in its place
    with pytest.raises(SystemExit):
        pretrain_table.main([*common[:2], "--out-dir", str(swapped.parent), *common[4:], "--rows", "ab-simclr",
                             "--resume-json", str(results), "--reprobe"])
    assert "is of another run (annotations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "ab-simclr", "--reprobe"])
    assert "--resume-json" in capsys.readouterr().err


def test_reprobe_under_other_probe_settings_writes_a_new_json(tiny_shapes, tmp_path, capsys):
    """The probes changed (more train images): the runs of the rows asked for are probed again from their
    checkpoints into a new JSON of the new settings, their training results kept; the old JSON is untouched."""
    old, new, out_dir = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "runs"
    common = ["--shapes-root", str(tiny_shapes), "--out-dir", str(out_dir), "--plot", str(tmp_path / "t.png"),
              "--probe-val-images", "6", *TINY]
    assert pretrain_table.main([*common, "--rows", "random-init,ab-simclr", "--probe-train-images", "4",
                                "--json", str(old)]) == 0
    before = old.read_text()
    first = json.loads(before)
    capsys.readouterr()
    # Other probe settings without --reprobe, or into the same JSON: refused, each saying what to do.
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "ab-simclr", "--probe-train-images", "8", "--resume-json", str(old)])
    assert "probe_train_images differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "ab-simclr", "--probe-train-images", "8", "--resume-json", str(old),
                             "--reprobe"])
    assert "pass --json NEW" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_table.main([*common, "--rows", "labels", "--probe-train-images", "8", "--resume-json", str(old),
                             "--reprobe", "--json", str(new)])
    assert "holds no run of the rows labels" in capsys.readouterr().err
    assert old.read_text() == before and not new.exists()
    # Only ab-simclr asked for: random init is left out of the new JSON (its scores are of the old probes).
    assert pretrain_table.main([*common, "--rows", "ab-simclr", "--probe-train-images", "8", "--resume-json",
                                str(old), "--reprobe", "--json", str(new)]) == 0
    assert "0 runs and 1 probed again" in capsys.readouterr().out
    second = json.loads(new.read_text())
    assert old.read_text() == before
    assert second["settings"]["probe_train_images"] == 8 and set(second["runs"]) == {"ab-simclr"}
    assert second["reprobed_from"]["differ"] == ["probe_train_images"]
    assert second["reprobed_from"]["settings"]["probe_train_images"] == 4
    assert len(second["invocations"]) == 2 and second["invocations"][0] == first["invocations"][0]
    held, again = first["runs"]["ab-simclr"]["0"], second["runs"]["ab-simclr"]["0"]
    assert again["train_seconds"] == held["train_seconds"] and again["diagnostics"] == held["diagnostics"]
    assert "reprobed" in again and again["probes"] != held["probes"]  # fitted on 8 train images, not 4
    # The new JSON resumes under its own settings like any other.
    assert pretrain_table.main([*common, "--rows", "ab-simclr", "--probe-train-images", "8", "--resume-json",
                                str(new)]) == 0
    assert "skip ab-simclr seed 0" in capsys.readouterr().out


def test_resume_refuses_other_settings(tiny_shapes, tmp_path, capsys):
    results = tmp_path / "table.json"
    results.write_text(json.dumps({"settings": {"config": {"total_steps": 999}}, "runs": {}, "invocations": []}))
    try:
        pretrain_table.main(["--shapes-root", str(tiny_shapes), "--rows", "random-init", "--resume-json",
                             str(results), "--out-dir", str(tmp_path / "runs"), *TINY])
    except SystemExit as exit_:
        assert exit_.code == 2
    else:
        raise AssertionError("a JSON of other settings was resumed")
    assert "total_steps" in capsys.readouterr().err


def test_reading_and_table_from_numbers():
    def entry(presence, n=3, std=0.01):
        return {"n": n, "train_seconds": 1.0,
                **{k: ((presence, std) if k == "presence_map" else (0.5, std)) for k in pretrain_table.PROBES}}

    table = {"random-init": entry(0.20), "simclr": entry(0.30), "ab-simclr": entry(0.25), "labels": entry(0.30),
             "labels-gvf": entry(0.40), "ab-simclr-gamma0": entry(0.25)}
    lines = pretrain_table.reading(table)
    assert any(line.startswith("AB-SimCLR vs SimCLR: -0.050 presence mAP") and "presence mAP (worse)" in line
               for line in lines)
    assert ("On presence mAP the bootstrapped row is above its base for 1 of 2 sources (labels) and not for "
            "SimCLR.") in lines
    # 14 (source, probe) pairs: only labels' presence is better (equal means are not); SimCLR's presence is worse
    # by 0.05 and labels' better by 0.10, both beyond hypot(0.01, 0.01).
    assert lines[0] == ("Over all 14 (source, probe) pairs, the bootstrapped row is better than its base in 1; the "
                        "difference exceeds the seed spread in 1 in its favour and 1 against it.")
    assert any(line.startswith("Where bootstrapping does not beat its base") and "presence mAP: SimCLR;" in line
               and "box top-1: SimCLR, labels;" in line for line in lines)  # equal means are not better
    assert any(line.startswith("AB-SimCLR with gamma 0 vs") and "within the seed spread" in line for line in lines)
    text = pretrain_table.render_table(table)
    assert "| SimCLR | 3 | 0.300 ± 0.010 |" in text


def test_reading_names_rows_below_random_init_and_docs_name_every_invocation(tmp_path, monkeypatch):
    def entry(box, std=0.005):
        return {"n": 3, "train_seconds": 1.0, **{k: ((box, std) if k == "box_top1" else (0.5, std))
                                                 for k in pretrain_table.PROBES}}

    table = {"random-init": entry(0.35), "simclr": entry(0.32), "labels": entry(0.37), "dino": entry(0.345)}
    lines = pretrain_table.reading(table)
    # 0.32 is 0.03 below 0.35, beyond the spread (hypot(0.005, 0.005) = 0.007); 0.345 is within it.
    assert "Below the random-init encoder on box top-1 by more than the seed spread: SimCLR." in lines

    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{pretrain_table.START}\nold\n{pretrain_table.END}\ntail\n")
    monkeypatch.setattr(pretrain_table, "DOCS", docs)
    config = {"total_steps": 200, "batch_size": 64, "buffer_size": 8192, "replay_ratio": 2.0, "policy": "rrc",
              "views": 4, "augmentations": ["flip"], "encoder": "cnn", "obs_size": 32, "lr": 0.002, "gamma": 0.5,
              "backup": "max", "crop_scale": [0.05, 1.0]}
    machine = "AMD EPYC, 2 cores"
    meta = {"invocations": [{"command": "python benchmarks/pretrain_table.py --write-docs", "runs": 39,
                             "wall_seconds": 3727.6, "commit": "be94cb0", "machine": machine},
                            {"command": "python benchmarks/pretrain_table.py --resume-json r.json --write-docs",
                             "runs": 0, "wall_seconds": 2.2, "commit": "abc1234", "machine": machine}],
            "settings": {"config": config, "probe_val_images": None, "probe_train_images": 2000},
            "runs_total": 39, "run_seconds": 3690.0, "missing": [], "json": "docs/results/pretrain_table.json"}
    pretrain_table.write_docs(pretrain_table.render_table(table), lines, meta, tmp_path / "figure.png")
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\n") and text.endswith(f"{pretrain_table.END}\ntail\n") and "old" not in text
    assert ("Measured with `python benchmarks/pretrain_table.py --write-docs` (39 runs, wall time 3728 s, commit "
            "be94cb0); then `python benchmarks/pretrain_table.py --resume-json r.json --write-docs` (0 runs, wall "
            "time 2 s, commit abc1234) on AMD EPYC, 2 cores. The 39 runs in the JSON took 3690 s") in text
    assert "200 steps x 64 transitions (12,800 samples)" in text and "policy rrc, 4 views per image" in text
    # A config written before crop_area existed drew the views' area log-uniformly (LEGACY_DEFAULTS).
    assert "views of log-uniform area in 0.05-1 of the image" in text
    assert "Raw per-seed results: `docs/results/pretrain_table.json`." in text
    assert "- Below the random-init encoder on box top-1 by more than the seed spread: SimCLR." in text
    # Another section (the table under other probe settings): appended once under its own heading, then replaced
    # in place; the default section is left as it was.
    other = {**meta, "settings": {**meta["settings"], "probe_train_images": 10000,
                                  "config": {**config, "crop_area": "uniform"}}}
    for _ in range(2):
        pretrain_table.write_docs("| new table |", lines, other, tmp_path / "figure2.png", "pretrain_table_all")
    again = docs.read_text()
    assert again.startswith(text) and again.count("<!-- pretrain_table_all:start -->") == 1
    assert again.count("## Pretraining comparison on Shapes: uniform view areas, probes fitted on 10,000 train "
                       "images") == 1
    assert "views of uniform area in 0.05-1 of the image" in again
    assert "| new table |" in again and "figure2.png" in again


def test_resume_refuses_a_corrupt_json(tiny_shapes, tmp_path, capsys):
    for text in ("{not json", "[1, 2]", '{"settings": {}}'):
        results = tmp_path / "table.json"
        results.write_text(text)
        try:
            pretrain_table.main(["--shapes-root", str(tiny_shapes), "--rows", "random-init", "--resume-json",
                                 str(results), "--out-dir", str(tmp_path / "runs"), *TINY])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"a corrupt JSON was resumed: {text}")
        assert "is not a JSON written by this script" in capsys.readouterr().err


def test_reading_compares_every_trained_row_with_both_floors_and_the_attentive_probes():
    def entry(value, std=0.005):
        return {"n": 3, "train_seconds": 1.0, **{k: (value, std) for k in pretrain_table.PROBES}}

    table = {"random-init": entry(0.30), "colour-grid": entry(0.20), "simclr": entry(0.40), "ab-simclr": entry(0.31)}
    table["ab-simclr"]["attn_box_top1"] = (0.45, 0.005)
    lines = pretrain_table.reading(table)
    # MAE is lower-better: every row's 0.40 and 0.31 count MAE is worse than random init's 0.30 and the floor's 0.20;
    # AB-SimCLR's 0.31 is 0.01 above random init's 0.30 elsewhere, beyond hypot(0.005, 0.005).
    assert ("Above the random init on every probe by more than the seed spread: none. Not (the probes where not): "
            "SimCLR (count MAE); AB-SimCLR (count MAE)." in lines)
    assert not any("Below the random-init encoder" in line and "colour-grid" in line for line in lines)
    assert any(line.startswith("On the attentive probes, where the paper's gains show, AB-X minus X: SimCLR: -0.090 "
                               "attentive presence mAP (beyond the spread), +0.050 attentive box top-1 (beyond")
               for line in lines)


def test_an_ablation_is_read_and_drawn_against_its_own_full_row(tmp_path):
    def entry(value, std=0.005):
        return {"n": 3, "train_seconds": 1.0, **{k: (value, std) for k in pretrain_table.PROBES}}

    table = {"random-init": entry(0.30), "dino": entry(0.40), "ab-dino": entry(0.42), "ab-dino-no-tokens": entry(0.40),
             "ab-simclr": entry(0.45)}
    lines = pretrain_table.reading(table)
    dino = [line for line in lines if line.startswith("AB-DINO with no action tokens vs AB-DINO (gamma 0.5, max "
                                                      "backup, action tokens): -0.020 presence mAP")]
    assert len(dino) == 1 and "(worse)" in dino[0]
    assert not any(line.startswith("AB-SimCLR with") for line in lines)  # no SimCLR ablation in the table
    figure = tmp_path / "table.png"
    pretrain_table.plot(table, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_floors_are_matched_to_the_machine_that_probed_each_run():
    def probes(value):
        return dict.fromkeys(pretrain_table.PROBES, value)

    def run(value, machine, **extra):
        return {"probes": probes(value), "machine": machine, **extra}

    amd, xeon, other = ("AMD EPYC, 2 cores, torch 2", "Intel Xeon, 2 cores, torch 2", "Apple M2, 8 cores, torch 2")
    # random init probed on the AMD machine (0.30, 0.31, 0.32) and again on the Xeon (0.35, 0.36, 0.37); SimCLR
    # trained and probed on the Xeon (0.34, ...): above the AMD floor, below the Xeon one.
    runs = {"random-init": {str(s): run(0.30 + 0.01 * s, amd, by_machine={xeon: {"probes": probes(0.35 + 0.01 * s)}})
                            for s in range(3)},
            "colour-grid": {"0": run(0.10, amd)},  # one seed only
            "simclr": {str(s): run(0.34 + 0.01 * s, xeon, precision="float32") for s in range(3)},
            "ab-simclr": {str(s): run(0.40, amd, reprobed={"machine": other}, precision="bf16") for s in range(3)}}
    assert pretrain_table.probed_on(runs["ab-simclr"]["0"]) == other  # --reprobe's machine, not the training's
    assert pretrain_table.reference_probes(runs["random-init"]["1"]) == {amd: probes(0.31), xeon: probes(0.36)}
    # The AB-SimCLR runs were last probed on a third machine: the floors have to be probed there (only there).
    assert pretrain_table.missing_references(runs, other) == [(0, "colour-grid"), (0, "random-init"),
                                                              (1, "random-init"), (2, "random-init")]
    assert pretrain_table.missing_references(runs, xeon) == [(0, "colour-grid")]
    assert pretrain_table.missing_references(runs, "a machine that probed nothing") == []

    table = pretrain_table.aggregate(runs, 3)
    assert table["random-init"]["presence_map"] == pytest.approx((0.31, 0.01))  # its own row: the first machine
    assert table["random-init"]["machines"][xeon]["presence_map"] == pytest.approx((0.36, 0.01))
    assert table["colour-grid"]["machines"] == {}  # probed on one machine only: no rows under it
    versus = table["simclr"]["versus"]
    assert versus["random-init"]["presence_map"] == pytest.approx((0.36, 0.01)) and versus["random-init"][
        "unmatched"] == 0
    assert versus["colour-grid"]["n"] == 1 and versus["colour-grid"]["missing"] == 2
    assert versus["colour-grid"]["unmatched"] == 1  # seed 0 was probed on the Xeon; the floor only on the AMD
    assert table["ab-simclr"]["versus"]["random-init"]["unmatched"] == 3  # falls back to the row's own probes
    diff = pretrain_table.compare(table, "simclr", "random-init")["presence_map"]
    assert diff["delta"] == pytest.approx(-0.01) and not diff["better"]  # against the AMD row it would be +0.04
    text = pretrain_table.render_table(table)
    assert "| random init, probed on AMD EPYC, 2 cores | 3 | 0.310 ± 0.010 |" in text
    assert "| random init, probed on Intel Xeon, 2 cores | 3 | 0.360 ± 0.010 |" in text
    assert "| colour-grid floor | 1 | 0.100 |" in text
    lines = pretrain_table.reading(table)
    assert "Not: SimCLR." in next(line for line in lines if line.startswith("Above the random-init encoder on"))
    assert ("Probed on more than one machine: random init (the rows under them); each trained row is set against "
            "the ones probed on the machine that probed it.") in lines
    assert ("Set against a floor probed on another machine (no probes of theirs on the run's machine): SimCLR "
            "(colour-grid floor, 1 of 1 seeds); AB-SimCLR (random init, 3 of 3 seeds); AB-SimCLR (colour-grid floor, "
            "1 of 1 seeds).") in lines
    assert ("Set against a floor over fewer seeds than the row: SimCLR (colour-grid floor lacks 2 of its seeds); "
            "AB-SimCLR (colour-grid floor lacks 2 of its seeds).") in lines
    assert "The loss ran in bf16 for AB-SimCLR; in float32 for SimCLR." in lines
    assert table["simclr"]["precision"] == {"float32": [0, 1, 2]}
    # A row whose seeds ran in different precisions (trained on machines with and without native bf16): the
    # sentence names the seeds of each.
    runs["simclr"]["2"]["precision"] = "bf16"
    table = pretrain_table.aggregate(runs, 3)
    assert table["simclr"]["precision"] == {"bf16": [2], "float32": [0, 1]}
    assert ("The loss ran in bf16 for SimCLR (seed 2), AB-SimCLR; in float32 for SimCLR (seeds 0, 1)."
            in pretrain_table.reading(table))
    runs["simclr"]["2"]["precision"] = "float32"

    # Seeds of one floor first probed on different machines: the row says so, and each machine gets its own row.
    runs["random-init"]["2"] = run(0.50, xeon)
    table = pretrain_table.aggregate(runs, 3)
    assert table["random-init"]["primary"] == {amd, xeon}
    assert table["random-init"]["machines"][xeon]["n"] == 3 and table["random-init"]["machines"][amd]["n"] == 2
    assert "| random init, mixed machines | 3 |" in pretrain_table.render_table(table)
    # A run that recorded no machine matches a floor that recorded none.
    unknown = {"random-init": {"0": {"probes": probes(0.2)}}, "simclr": {"0": {"probes": probes(0.3)}}}
    assert pretrain_table.aggregate(unknown, 1)["simclr"]["versus"]["random-init"]["unmatched"] == 0


def test_run_diagnostics_average_the_last_tenth_and_keep_the_teacher_where_logged():
    end = {"target_drift": 0.12, "collect_fraction": 0.01, "ema_base_momentum": 0.99}
    dino = [{"base": 5.0, "teacher_entropy": float(i), "teacher_cosine": 0.5} for i in range(20)]
    got = pretrain_table.run_diagnostics({"metrics": dino, **end})
    assert got["teacher_entropy"] == pytest.approx((18 + 19) / 2)  # the last 10% of 20 steps: steps 18 and 19
    assert got["teacher_cosine"] == pytest.approx(0.5) and "bootstrap" not in got
    assert got["target_drift"] == 0.12 and got["collect_fraction"] == 0.01
    simclr = [{"bootstrap": 4.0, "target_entropy": 3.0, "uniform": 5.5}] * 5  # fewer than 10 steps: the last one
    got = pretrain_table.run_diagnostics({"metrics": simclr, **end})
    assert got["bootstrap"] == 4.0 and got["uniform"] == 5.5 and "teacher_entropy" not in got
