"""The one fitted Blend, on the stored members of tests/fixtures/blend/ (no model runs but the
bundle's notebook): its JSON round-trips to the same predictions, the ensemble, the pseudo-labels
and the bundle fit the same one, and a bundle manifest whose blend was edited is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from blend_cases import FIXTURES, MEMBERS, WEIGHTS, config_for

from src.core.runtime import Runtime
from src.core.utils import UserError
from src.data.tables import load_test_table
from src.ensembling import pipeline
from src.ensembling.blend import Blend
from src.ensembling.pseudo_labels import make_pseudo
from src.ensembling.submission import blend_path
from src.kaggle.bundle import BundleSpec, build_bundle
from src.runs.layout import file_sha1, fold_paths, fold_record, write_done
from src.runs.members import open_members


@pytest.fixture
def case(task_competition, tmp_path):
    """case(task) -> (cfg, member names, weights) over a copy of the task's stored members."""
    def make(task: str):
        comp, config, overrides = task_competition(task)
        shutil.copytree(FIXTURES / task / "outputs", tmp_path / "outputs")
        return config_for(task, comp, config, overrides, tmp_path / "outputs"), MEMBERS.get(task, ["a"]), \
            WEIGHTS.get(task, "equal")
    return make


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "ordinal"])
def test_the_blend_json_round_trips_to_the_same_predictions(case, task):
    cfg, names, weights = case(task)
    members = open_members(cfg, names)
    rt = Runtime.from_cfg(cfg.runtime)
    fitted = Blend.fit(cfg, members, list(cfg.ensemble.tta), weights, cfg.ensemble.voting, rt)
    again = Blend.from_json(fitted.to_json(), members)
    assert again == fitted and again.to_json() == fitted.to_json()
    test, _ = load_test_table(cfg.data)
    member_probs = fitted.member_probs(members, test, rt, cfg.loader)
    probs = fitted.predict(member_probs)
    assert again.predict(member_probs).tobytes() == probs.tobytes()
    decided = fitted.decide(probs)
    assert (decided is None) == (task == "multiclass")
    if decided is not None:
        assert again.decide(probs).tobytes() == decided.tobytes()
    body = fitted.to_dict()
    assert body["best_sha1"] == {m.name: {str(k): m.sha(k) for k in m.folds} for m in members}
    assert body["folds"] == {m.name: m.folds for m in members} and np.isfinite(body["oof_score"])


def test_the_ensemble_the_pseudo_labels_and_the_bundle_fit_the_same_blend(case, tmp_path):
    cfg, names, weights = case("multiclass")
    sub = pipeline.run(cfg, names, None, weights, None, tmp_path / "ens" / "submission.csv")
    written = json.loads(blend_path(sub).read_text())
    stored = json.loads((FIXTURES / "multiclass" / "expected" / "bundle.json").read_bytes())
    assert {k: written[k] for k in stored} == stored  # the decisions the old code's bundle recorded
    table = make_pseudo(cfg, names, None, weights, None, 0.0, False, 1, tmp_path / "pseudo" / "p.csv")
    pseudo = pd.read_csv(table).set_index("id")
    probs = pd.read_csv(sub.with_name("submission_probs.csv")).set_index("id")
    assert len(pseudo) == len(probs)
    assert np.array_equal(pseudo.loc[probs.index, [f"prob_{c}" for c in probs.columns]].to_numpy(), probs.to_numpy())
    manifest = build_bundle(cfg, _spec(cfg, names), weights, tmp_path / "bundle", wheels=False)["manifest"]
    shipped = {k: v for k, v in manifest["blend"].items() if k not in ("best_sha1", "digest")}
    assert shipped == {k: v for k, v in written.items() if k not in ("best_sha1", "digest")}


def _spec(cfg, names) -> BundleSpec:
    return BundleSpec(members=names, views=list(cfg.ensemble.tta), weights=[], voting=cfg.ensemble.voting,
                      fmt=cfg.ensemble.format, competition="digits", dataset="user/digits-bundle",
                      kernel="user/digits-inference", gpu=False, half=False)


def _kernel(cfg, bundle, manifest, out):
    """What the bundle's notebook runs: the ensemble on the bundled folds, report off, the manifest's blend."""
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(
        update={"output_dir": str(bundle / "dataset" / "outputs")})})
    return pipeline.run(cfg, manifest["members"], manifest["views"], manifest["weights"], manifest["voting"], out,
                        manifest["format"], report=False, cache=False, thresholds=manifest.get("thresholds"),
                        blend=manifest.get("blend"))


def test_a_bundle_whose_blend_was_edited_is_refused(case, tmp_path):
    cfg, names, weights = case("multilabel")
    bundle = tmp_path / "bundle"
    manifest = build_bundle(cfg, _spec(cfg, names), weights, bundle, wheels=False)["manifest"]
    kernel = _kernel(cfg, bundle, manifest, tmp_path / "kernel" / "submission.csv")
    assert kernel.read_bytes() == (FIXTURES / "multilabel" / "expected" / "kernel_submission.csv").read_bytes()
    assert Blend.from_json(blend_path(kernel).read_text()) == Blend.from_json(manifest["blend"])

    edited = json.loads(json.dumps(manifest))
    edited["blend"]["thresholds"][0] = 0.01  # the digest no longer matches
    with pytest.raises(UserError, match="edited after it was fitted"):
        _kernel(cfg, bundle, edited, tmp_path / "k1.csv")
    edited = {**manifest, "thresholds": [0.01] * len(manifest["thresholds"])}  # the old key, not the blend
    with pytest.raises(UserError, match="thresholds passed .* differ from those of the fitted blend"):
        _kernel(cfg, bundle, edited, tmp_path / "k2.csv")
    name = names[0]
    best = fold_paths(bundle / "dataset" / "outputs" / name, 0).best
    best.write_bytes(best.read_bytes() + b"\0")  # other bytes than the blend was fitted with
    fp = fold_paths(bundle / "dataset" / "outputs" / name, 0)
    write_done(fp, {**fold_record(fp), "best_sha1": file_sha1(fp.best)})  # recorded, so only the blend objects
    with pytest.raises(UserError, match="holds other weights than the blend was fitted with"):
        _kernel(cfg, bundle, manifest, tmp_path / "k3.csv")
    assert not (tmp_path / "k1.csv").exists() and not (tmp_path / "k3.csv").exists()


def test_a_recorded_submission_with_another_blend_beside_it_is_not_written_over(tmp_path):
    from src.ensembling.ledger import append_row, free_submission_path, ledger_path

    out = tmp_path / "submissions" / "a.csv"
    out.parent.mkdir()
    out.write_text("id,label\n1,3\n")
    blend_path(out).write_text('{"weights": [0.5, 0.5]}')
    sha = "0" * 40
    append_row(ledger_path(out), {"file": str(out), "sha1": sha})
    assert free_submission_path(out, False, sha, '{"weights": [0.5, 0.5]}') == out  # the same bytes again
    assert free_submission_path(out, False, sha, '{"weights": [0.9, 0.1]}') == out.with_name("a_v2.csv")
    with pytest.raises(UserError, match="or over its blend, a.blend.json"):
        free_submission_path(out, True, sha, '{"weights": [0.9, 0.1]}')
