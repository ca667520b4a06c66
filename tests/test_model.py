import json
from pathlib import Path

import numpy as np
import pytest

from models.devices import pick_device
from models.fraud_features import FEATURE_NAMES, N_FEATURES, feature_row, parse_profile
from models.fraud_model import Band, combine_scores, load_cascade
from models.fraud_policy import Policy
from models.registry import ModelRegistry
from models.train_fraud import build_dataset, pr_auc, roc_auc
from models.transaction import Transaction
from tests.helpers import txn


def _served(model_dir):  # type: ignore[no-untyped-def]
    return load_cascade(ModelRegistry(model_dir).folder(ModelRegistry(model_dir).served() or ""), device="cpu")


def test_trained_artifact_has_every_model_its_metrics_and_its_provenance(model_dir):
    version = ModelRegistry(model_dir).served()
    assert version is not None
    folder = model_dir / version
    references = [f"drift_reference.fraud-{kind}.json" for kind in ("gbt", "mlp", "gru")]
    for name in ("mlp.pt", "gbt.txt", "gru.pt", "schema.json", "metrics.json", "manifest.json", *references):
        assert (folder / name).exists(), name
    schema = json.loads((folder / "schema.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert schema["features"] == list(FEATURE_NAMES)
    assert manifest["training_data"]["events"] > 100_000 and manifest["code_version"]
    first, last = manifest["training_data"]["event_time_ms"]
    assert first < last
    # both stage-1 models are reported, and the better one is served
    for kind in ("gbt", "mlp"):
        assert metrics[f"{kind}_roc_auc"] > 0.9 and metrics[f"{kind}_pr_auc"] > 0.7
        assert metrics[f"{kind}_us_per_event_batched"] > 0
    best = schema["best_stage1"]
    assert metrics[f"{best}_pr_auc"] == max(metrics["gbt_pr_auc"], metrics["mlp_pr_auc"])
    # trained with profiles dropped: without a profile stage 1 still ranks fraud well
    assert metrics["no_profile_roc_auc"] > 0.9 and metrics["with_profile_roc_auc"] > 0.9
    assert 0.0 < metrics["escalated_share"] < 0.1


def test_the_sequence_model_improves_the_band_it_sees(model_dir):
    """Stage 2 must earn its latency: on held-out events of the band, it ranks fraud better than stage 1."""
    cascade = _served(model_dir)
    data = build_dataset(60_000, seed=21, n_cards=3000)
    s1 = cascade.stage1(data.rows)
    band = np.array([cascade.band.wants(s, f) for s, f in zip(s1, data.rules_fired, strict=True)])
    assert band.sum() > 300
    s2 = cascade.stage2(data.sequences[band], data.rows[band], s1[band])
    combined = combine_scores(s1[band], s2)
    assert pr_auc(data.labels[band], combined) > pr_auc(data.labels[band], s1[band])


def test_the_fallback_is_never_a_constant(model_dir):
    """Every event scored without its profile (Redis down, a new card): the scores still separate fraud."""
    cascade = _served(model_dir)
    data = build_dataset(20_000, seed=12, n_cards=2000)
    assert data.without_profile is not None
    bare = cascade.stage1(data.without_profile)
    assert np.std(bare) > 0.05 and len(np.unique(np.round(bare, 3))) > 100
    assert roc_auc(data.labels, bare) > 0.85
    assert 0.0 < float(np.mean(bare >= 0.9)) < 0.2  # neither "decline everything" nor "approve everything"


@pytest.mark.parametrize("kind", ["gbt", "mlp"])
def test_either_stage1_model_scores_a_batch_the_same_as_one_row_at_a_time(model_dir, kind):
    folder = ModelRegistry(model_dir).folder(ModelRegistry(model_dir).served() or "")
    cascade = load_cascade(folder, device="auto", stage1=kind)
    assert cascade.device == pick_device("auto") and cascade.stage1_kind == kind
    data = build_dataset(20_000, seed=11, n_cards=2000)
    scores = cascade.stage1(data.rows)
    assert scores.shape == (len(data.rows),) and np.all((scores >= 0) & (scores <= 1))
    assert roc_auc(data.labels, scores) > 0.85  # unseen seed: it generalises
    # an event's score does not depend on its batch (trees: bit for bit; float64 matmuls: to 1e-12), so a
    # replay after a crash reproduces its decision
    alone = np.array([cascade.stage1(data.rows[i : i + 1])[0] for i in range(5)])
    assert np.abs(alone - scores[:5]).max() <= (0 if kind == "gbt" else 1e-12)
    seqs, rows = data.sequences[:64], data.rows[:64]
    both = cascade.stage2(seqs, rows, scores[:64])
    assert cascade.stage2(seqs[3:4], rows[3:4], scores[3:4])[0] == pytest.approx(both[3], abs=1e-12)


def test_missing_model_and_unknown_stage1_are_clear_errors(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="sluice train fraud"):
        load_cascade(tmp_path)
    with pytest.raises(ValueError, match="gbt, mlp or best"):
        load_cascade(ModelRegistry(model_dir).folder(ModelRegistry(model_dir).served() or ""), stage1="xgb")


def test_band_routes_uncertain_scores_and_fired_rules():
    band = Band(0.2, 0.9)
    assert [band.wants(s, False) for s in (0.1, 0.2, 0.5, 0.9)] == [False, True, True, False]
    assert band.wants(0.01, True) and band.wants(0.99, True)


def test_profile_fallback_sets_the_flag():
    row = feature_row(txn("e", "c", 100.0, t_s=0), (1, 100, 1, 100, 1, 3600), None)
    assert len(row) == N_FEATURES and row[FEATURE_NAMES.index("profile_missing")] == 1.0


def test_policy_rules_fire_from_their_bounds_and_a_high_risk_country_only_for_cards_from_elsewhere():
    def paid(country: str, at_ms: int, category: str = "grocery") -> Transaction:
        return Transaction("e", "c", 20.0, "USD", "m", category, country, at_ms, 0.0)

    policy, calm = Policy(), (1.0, 0, 0, 0, 0, 0)
    assert policy.rules(paid("GB", 0), (5.0, 0, 0, 0, 0, 0), None) == ["velocity_burst"]  # the fifth in a minute
    assert policy.rules(paid("GB", 0), (4.0, 0, 0, 0, 0, 0), None) == []
    assert policy.rules(paid("NG", 0), calm, None) == []  # no profile: the card is taken to be from there
    assert policy.rules(paid("NG", 0), calm, parse_profile({"home_country": "NG"})) == []  # at home
    assert policy.rules(paid("NG", 0), calm, parse_profile({"home_country": "GB"})) == ["high_risk_country"]
    hour_ms = 3_600_000  # GB's clock is UTC
    assert policy.rules(paid("GB", 5 * hour_ms - 60_000, "crypto"), calm, None) == ["risky_category_at_night"]
    assert policy.rules(paid("GB", 5 * hour_ms, "crypto"), calm, None) == []  # five o'clock is morning


def _registry_with_a_copy(tmp_path: Path, model_dir: Path, prefix: str) -> tuple[ModelRegistry, str, str]:
    """A registry of this test's own holding the trained model and a second version copied from it:
    (registry, the served version, the copy)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    registry = ModelRegistry(root)
    served = registry.served()
    assert served is not None
    shutil.copytree(root / served, root / (prefix + served))
    return registry, served, prefix + served


def test_promoting_the_shadowed_version_ends_its_shadow_and_rollback_does_not_revive_it(tmp_path, model_dir):
    registry, first, second = _registry_with_a_copy(tmp_path, model_dir, "copy-of-")
    registry.shadow(second)
    assert registry.candidate() == second
    registry.promote(second, reason="test")
    assert (registry.served(), registry.candidate()) == (second, None)  # never served and shadowed at once
    assert registry.rollback() == first and registry.candidate() is None


def test_rollbacks_stack_back_through_the_promotions(tmp_path, model_dir):
    """Promote A, B, C: rollback serves B, a second rollback A, not C again; then nothing is left."""
    import shutil

    from models.registry import UnknownVersion

    root = tmp_path / "models"
    root.mkdir()
    served = ModelRegistry(model_dir).served()
    assert served is not None
    for name in "ABC":
        shutil.copytree(model_dir / served, root / name)
    registry = ModelRegistry(root)
    for name in "ABC":
        registry.promote(name)
    assert [registry.rollback(), registry.rollback()] == ["B", "A"] and registry.served() == "A"
    with pytest.raises(UnknownVersion, match="nothing to roll back to"):
        registry.rollback()
    registry.promote("C")
    assert registry.rollback() == "A"
    registry.promote("B")
    registry.promote("B")  # promoting the served version again is no step to roll back through
    assert registry.rollback() == "A"


def test_a_version_that_does_not_load_is_neither_promoted_nor_shadowed(tmp_path, model_dir, capsys):
    """Truncated weights: `sluice model promote` and `shadow` load the version first and refuse it in one line,
    leaving what is served as it was; an unknown version is one line too."""
    from sluice.cli import main

    registry, served, broken = _registry_with_a_copy(tmp_path, model_dir, "broken-")
    root = registry.root
    for weights in (root / broken).glob("*.pt"):
        weights.write_bytes(weights.read_bytes()[:100])
    for command in ("promote", "shadow"):
        assert main(["model", command, broken, "--path", str(root)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"sluice: error: {broken} does not load (") and err.endswith("nothing changed"), err
    assert (registry.served(), registry.candidate()) == (served, None)
    with pytest.raises(SystemExit, match="is the served version: shadow another one"):
        main(["model", "shadow", served, "--path", str(root)])  # it would score the served model twice
    assert registry.candidate() is None
    assert main(["model", "promote", "nope", "--path", str(root)]) == 1
    assert (
        capsys.readouterr().err.strip() == f"sluice: error: no model version 'nope' in {root} (see `sluice model list`)"
    )
