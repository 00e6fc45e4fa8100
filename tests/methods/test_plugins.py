"""`--plugin` methods with the NeurIPS'23 challenge signature, audited as users expect: the starting kit's
example and a Kaggle-style in-place dict-batch submission run end to end; same-named plug-ins never share
cached results and editing a plug-in recomputes; plug-ins are seeded and leave the caller's randomness
alone; every way a plug-in can fail is one line (exit code, no output folder), its traceback in the run log."""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from worstforget.audit.units import method_identity
from worstforget.cli import cli
from worstforget.methods import make_method
from worstforget.methods.plugin import PluginMethod
from worstforget.methods.plugin_load import load_plugin, source_hash

FAST = ["--dataset", "synthetic", "--epochs", "3"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugins(monkeypatch, isolated_registry):
    """`tests.plugin_*` importable from any working folder; registrations undone afterwards."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return isolated_registry


@pytest.fixture
def applies(monkeypatch):
    """Counts plug-in runs (`PluginMethod.apply`): a cached unit does not run its plug-in."""
    calls: list[str] = []
    real = PluginMethod.apply

    def counting(self, *args, **kwargs):
        calls.append(self.target)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PluginMethod, "apply", counting)
    return calls


def invoke(runner, *args):
    return runner.invoke(cli, ["--quiet", *args])


def unlearn(runner, target: str, method: str, *extra, out: Path | None = None, fmt: str = "tuple"):
    return invoke(runner, "--plugin", target, "--batch-format", fmt, *extra, "unlearn", "--method", method, *FAST,
                  *(["--out", str(out)] if out else ["--json"]))


def assert_clean_error(result, exit_code: int):
    """Exited through click with one 'Error:' line and the given code, no traceback on the terminal."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output


def logged_traceback(result) -> str:
    """The run log named by the message, which must hold the full traceback."""
    match = re.search(r"\(full traceback in (.+?\.log)\)", result.output)
    assert match, result.output
    text = Path(match.group(1)).read_text()
    assert "Traceback (most recent call last)" in text
    return text


# --- running real submissions ----------------------------------------------------------------------
def test_challenge_kit_example_runs_through_unlearn(cli_runner, tmp_path, plugins):
    out = tmp_path / "run"
    result = unlearn(cli_runner, "tests.plugin_example:my_unlearn", "my_unlearn", out=out)
    assert result.exit_code == 0, result.output
    assert "my_unlearn" in plugins.names()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "my_unlearn"
    mine = summary["sets"]["random"]["methods"]["my_unlearn"]
    assert set(mine) >= {"UA", "MIA", "RA", "TA", "RTE", "avg_gap"}
    assert mine["RA"]["mean"] > 50  # one epoch of fine-tuning keeps a working classifier


def test_kaggle_submission_runs_in_place_with_dict_batches_through_unlearn_and_search(cli_runner, tmp_path, plugins):
    run_dir, search_dir = tmp_path / "run", tmp_path / "search"
    result = unlearn(cli_runner, "tests.plugin_kaggle:unlearning", "unlearning", out=run_dir, fmt="dict")
    assert result.exit_code == 0, result.output
    methods = json.loads((run_dir / "summary.json").read_text())["sets"]["random"]["methods"]
    assert methods["unlearning"]["RA"]["mean"] > 50
    result = invoke(cli_runner, "--plugin", "tests.plugin_kaggle:unlearning", "--batch-format", "dict", "search",
                    "--method", "unlearning", *FAST, "--outer-steps", "2", "--num-random", "1", "--seeds", "1",
                    "--no-stability", "--out", str(search_dir))
    assert result.exit_code == 0, result.output
    summary = json.loads((search_dir / "summary.json").read_text())
    assert summary["method"] == "unlearning" and len(summary["search"]["objective"]) >= 2
    assert (search_dir / "worst_case_indices.npy").exists()


def test_in_place_plugin_returning_none_gives_the_changed_net(synthetic, trained, plugins):
    method = make_method(load_plugin("tests.plugin_cases:in_place"))
    w = torch.zeros(synthetic.num_train)
    model = method.apply(trained, synthetic, w, seed=0)
    last = list(model.parameters())[-1]
    assert torch.equal(last, torch.zeros_like(last))
    assert not torch.equal(list(trained.parameters())[-1], last)  # the original is untouched


def plugin_scores(result, name: str = "unlearning") -> dict:
    """UA, MIA, RA, TA (means) of the plug-in in an `unlearn --json` output."""
    methods = json.loads(result.output)["sets"]["random"]["methods"]
    return {k: methods[name][k]["mean"] for k in ("UA", "MIA", "RA", "TA")}


# --- caching ---------------------------------------------------------------------------------------
def test_same_named_plugins_in_different_modules_are_cached_apart(cli_runner, plugins, applies):
    kaggle = unlearn(cli_runner, "tests.plugin_kaggle:unlearning", "unlearning", fmt="dict")
    twin = unlearn(cli_runner, "tests.plugin_twin:unlearning", "unlearning", fmt="dict")
    again = unlearn(cli_runner, "tests.plugin_kaggle:unlearning", "unlearning", fmt="dict")
    for result in (kaggle, twin, again):
        assert result.exit_code == 0, result.output
    assert applies == ["tests.plugin_kaggle:unlearning", "tests.plugin_twin:unlearning"]  # the third is cached
    scores = [plugin_scores(r) for r in (kaggle, twin, again)]
    assert scores[0] != scores[1] and scores[0] == scores[2]  # ascent on the forget set vs noise + fine-tuning


def test_cache_key_holds_module_function_source_format_and_hyperparameters(plugins):
    def key(target, fmt="tuple", **params):
        return method_identity(make_method(load_plugin(target, batch_format=fmt), params))

    base = key("tests.plugin_kaggle:unlearning")
    assert base["code"] != key("tests.plugin_twin:unlearning")["code"]
    assert base["code"] != key("tests.plugin_kaggle:unlearning", fmt="dict")["code"]
    assert base != key("tests.plugin_kaggle:unlearning", batch_size=7)
    assert base == key("tests.plugin_kaggle:unlearning")
    assert key("tests.plugin_kaggle:unlearning=mine")["code"] == base["code"]  # renaming keeps the code key


PLUGIN_V1 = '''
import torch

def unlearning(net, retain_loader, forget_loader, val_loader):
    with torch.no_grad():
        list(net.parameters())[-2].mul_({scale})  # the last layer's weight
    return net
'''


def test_editing_a_plugin_file_invalidates_its_cache(cli_runner, tmp_path, monkeypatch, isolated_registry, applies):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no .pyc that could outlive the edit
    module = tmp_path / "wf_edited_submission.py"
    module.write_text(PLUGIN_V1.format(scale=1.0))
    target = "wf_edited_submission:unlearning"
    first = unlearn(cli_runner, target, "unlearning")
    cached = unlearn(cli_runner, target, "unlearning")
    module.write_text(PLUGIN_V1.format(scale=-1.0))
    monkeypatch.delitem(sys.modules, "wf_edited_submission")  # a new process would import the edit afresh
    edited = unlearn(cli_runner, target, "unlearning")
    for result in (first, cached, edited):
        assert result.exit_code == 0, result.output
    assert applies == [target, target]
    assert plugin_scores(first) == plugin_scores(cached) != plugin_scores(edited)


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_source_hash_covers_the_whole_package_or_a_module_and_its_sibling_imports(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    write(tmp_path / "wfpkg" / "__init__.py")
    write(tmp_path / "wfpkg" / "sub" / "__init__.py")
    sub = write(tmp_path / "wfpkg" / "sub" / "entry.py", "from ..helpers import x\n")
    helpers = write(tmp_path / "wfpkg" / "helpers.py", "x = 1\n")
    outside = write(tmp_path / "unrelated.py", "y = 1\n")
    single = write(tmp_path / "wf_single.py", "import wf_helper\nimport numpy\n")
    helper = write(tmp_path / "wf_helper.py", "z = 1\n")
    packaged = __import__("wfpkg.sub.entry", fromlist=["x"])
    alone = __import__("wf_single")

    before = source_hash(packaged), source_hash(alone)
    outside.write_text("y = 2\n")  # not part of either plug-in
    assert (source_hash(packaged), source_hash(alone)) == before
    helpers.write_text("x = 2\n")  # a file elsewhere in the package, imported relatively
    assert source_hash(packaged) != before[0] and source_hash(alone) == before[1]
    helper.write_text("z = 2\n")  # a sibling module the single-file plug-in imports
    assert source_hash(alone) != before[1]
    mid = source_hash(alone)
    single.write_text("import wf_helper  # edited\nimport numpy\n")
    assert source_hash(alone) != mid
    mid = source_hash(packaged)
    sub.write_text("from ..helpers import x  # edited\n")
    assert source_hash(packaged) != mid


# --- randomness ------------------------------------------------------------------------------------
def test_plugin_is_seeded_from_the_unit_seed_and_restores_the_callers_generators(synthetic, trained, plugins):
    method = make_method(load_plugin("tests.plugin_cases:noisy"))
    w = torch.zeros(synthetic.num_train)

    def params(seed: int) -> torch.Tensor:
        model = method.apply(trained, synthetic, w, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    def reseed() -> None:
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)

    reseed()
    expected = torch.rand(3), np.random.rand(3), random.random()
    reseed()
    first, same, other = params(0), params(0), params(1)
    after = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(first, same) and not torch.equal(first, other)
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


# --- batch formats ---------------------------------------------------------------------------------
@pytest.mark.parametrize("function, fmt, wanted", [("dict_reader", "tuple", "--batch-format dict"),
                                                    ("tuple_reader", "dict", "--batch-format tuple")])
def test_batch_read_the_wrong_way_names_the_batch_format_option(cli_runner, tmp_path, plugins, function, fmt, wanted):
    result = unlearn(cli_runner, f"tests.plugin_cases:{function}", function, out=tmp_path / "run", fmt=fmt)
    assert_clean_error(result, 2)
    assert wanted in result.output and function in result.output
    logged_traceback(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fmt", ["tuple", "dict"])
def test_loaders_yield_the_chosen_format_and_behave_like_dataloaders(synthetic, trained, plugins, fmt):
    seen = {}

    def spy(net, retain_loader, forget_loader, val_loader):
        seen["batches"] = [b for b in retain_loader]
        seen["lens"] = len(retain_loader), len(forget_loader), len(val_loader), len(retain_loader.dataset)
        seen["again"] = [b for b in retain_loader]
        seen["forget"] = [b for b in forget_loader]
        seen["rewrapped"] = list(DataLoader(retain_loader.dataset, batch_size=64))  # as some submissions do
        return net

    cls = type(make_method(load_plugin("tests.plugin_cases:format_agnostic", batch_format=fmt)))
    cls.function = staticmethod(spy)  # the class is this test's own: the registry is restored afterwards
    w = torch.zeros(synthetic.num_train)
    forget = torch.arange(0, synthetic.num_train, 3)
    w[forget] = 1.0
    cls(batch_size=50).apply(trained, synthetic, w, seed=0)
    x_of = (lambda b: b["image"]) if fmt == "dict" else (lambda b: b[0])
    y_of = (lambda b: b["age_group"]) if fmt == "dict" else (lambda b: b[1])
    retain_n = synthetic.num_train - len(forget)
    assert seen["lens"] == (-(-retain_n // 50), -(-len(forget) // 50), -(-len(synthetic.y_val) // 50), retain_n)
    xs = torch.cat([x_of(b) for b in seen["batches"]])
    ys = torch.cat([y_of(b) for b in seen["batches"]])
    keep = torch.ones(synthetic.num_train, dtype=torch.bool)
    keep[forget] = False
    # every retain sample exactly once per epoch, with its own label, reshuffled between epochs
    rows = [int(torch.nonzero((synthetic.x_train == x).all(1))[0]) for x in xs]
    assert sorted(rows) == torch.nonzero(keep).flatten().tolist()
    assert torch.equal(ys, synthetic.y_train[rows])
    assert not torch.equal(xs, torch.cat([x_of(b) for b in seen["again"]]))
    forget_rows = sorted(int(torch.nonzero((synthetic.x_train == x).all(1))[0])
                         for b in seen["forget"] for x in x_of(b))
    assert forget_rows == forget.tolist()
    rewrapped = torch.cat([x_of(b) for b in seen["rewrapped"]])
    assert torch.equal(rewrapped, synthetic.x_train[keep])


@pytest.mark.parametrize("fmt", ["tuple", "dict"])
def test_submission_that_tries_both_formats_still_works(synthetic, trained, plugins, fmt):
    from tests.plugin_cases import FORMAT_AGNOSTIC_SEEN as seen

    seen.clear()
    method = make_method(load_plugin("tests.plugin_cases:format_agnostic", batch_format=fmt))
    out = method.apply(trained, synthetic, torch.zeros(synthetic.num_train), seed=0)
    assert seen and {how for how, _ in seen} == {fmt}  # each format read the way it is meant to be
    xs = torch.cat([x for _, x in seen])  # nothing forgotten: the retain loader yields every training row once
    assert xs.shape == synthetic.x_train.shape
    assert torch.equal(xs[torch.argsort(xs[:, 0])],
                       synthetic.x_train.cpu()[torch.argsort(synthetic.x_train.cpu()[:, 0])])
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), trained.state_dict().values()))


# --- names -----------------------------------------------------------------------------------------
def test_plugin_named_like_a_builtin_is_refused_unless_overridden(cli_runner, tmp_path, plugins, applies):
    refused = unlearn(cli_runner, "tests.plugin_cases:finetune", "finetune", out=tmp_path / "run")
    assert_clean_error(refused, 2)
    assert "--plugin-override" in refused.output and not (tmp_path / "run").exists()
    assert not issubclass(plugins.get("finetune"), PluginMethod)
    alias = unlearn(cli_runner, "tests.plugin_cases:in_place=ft", "ft", out=tmp_path / "run")  # ft: finetune's alias
    assert_clean_error(alias, 2)
    assert applies == []
    replaced = unlearn(cli_runner, "tests.plugin_cases:finetune", "finetune", "--plugin-override")
    assert replaced.exit_code == 0, replaced.output
    assert issubclass(plugins.get("finetune"), PluginMethod) and applies == ["tests.plugin_cases:finetune"]
    by_alias = unlearn(cli_runner, "tests.plugin_cases:in_place=ft", "ft", "--plugin-override")
    assert by_alias.exit_code == 0, by_alias.output
    assert applies[-1] == "tests.plugin_cases:in_place=ft"


def test_two_plugins_of_one_name_are_refused_and_can_be_renamed(cli_runner, plugins):
    clash = invoke(cli_runner, "--plugin", "tests.plugin_kaggle:unlearning", "--plugin",
                   "tests.plugin_twin:unlearning", "list", "methods")
    assert_clean_error(clash, 2)
    assert "=NAME" in clash.output
    renamed = invoke(cli_runner, "--plugin", "tests.plugin_kaggle:unlearning=kaggle", "--plugin",
                     "tests.plugin_twin:unlearning=twin", "list", "methods")
    assert renamed.exit_code == 0, renamed.output
    assert {"kaggle", "twin"} <= set(plugins.names()) and "unlearning" not in plugins.names()


# --- failures --------------------------------------------------------------------------------------
FAILURES = [  # function, what the one line must say, whether a traceback is logged
    ("raises", "raised ValueError: the submission failed", True),
    ("exits", "raised SystemExit: 0", True),
    ("returns_string", "returned str, expected the unlearned nn.Module", False),
    ("returns_nan", "holds NaN or inf", False),
    ("returns_huge", "NaN or inf", False),
    ("wrong_classes", "the dataset has 3 classes", False),
    ("wrong_input", "fails on inputs of shape (24, 8): RuntimeError", True),
]


@pytest.mark.parametrize("function, message, traceback", FAILURES)
def test_plugin_failure_is_one_line_exit_1_and_writes_nothing(cli_runner, tmp_path, plugins, function, message,
                                                              traceback):
    out = tmp_path / "run"
    result = unlearn(cli_runner, f"tests.plugin_cases:{function}", function, out=out)
    assert_clean_error(result, 1)
    assert f"plugin {function} (tests.plugin_cases:{function})" in result.output and message in result.output
    if traceback:
        assert message.split(": ")[-1] in logged_traceback(result)
    assert not out.exists()


def test_plugin_failure_inside_a_search_is_one_line_and_writes_nothing(cli_runner, tmp_path, plugins):
    out = tmp_path / "search"
    result = invoke(cli_runner, "--plugin", "tests.plugin_cases:exits", "search", "--method", "exits", *FAST,
                    "--outer-steps", "2", "--num-random", "1", "--seeds", "1", "--no-stability", "--out", str(out))
    assert_clean_error(result, 1)
    assert "plugin exits (tests.plugin_cases:exits) raised SystemExit: 0" in result.output
    logged_traceback(result)
    assert not out.exists()


def test_huge_but_finite_logits_are_refused(synthetic, trained, plugins):
    from worstforget.core.errors import WorstforgetError

    def last_bias_huge(net, retain_loader, forget_loader, val_loader):
        with torch.no_grad():
            list(net.parameters())[-1].fill_(1e30)  # finite weights, finite but meaningless logits
        return net

    cls = type(make_method(load_plugin("tests.plugin_cases:in_place")))
    cls.function = staticmethod(last_bias_huge)
    with pytest.raises(WorstforgetError, match="logits up to 1e\\+30"):
        cls().apply(trained, synthetic, torch.zeros(synthetic.num_train), seed=0)


IMPORT_FAILURES = [("def unlearning(net, a, b, c)\n    return net\n", "SyntaxError"),
                   ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
                   ("raise RuntimeError('needs a GPU')\n", "RuntimeError: needs a GPU")]


@pytest.mark.parametrize("source, message", IMPORT_FAILURES)
def test_plugin_whose_import_fails_is_one_line_exit_2(cli_runner, tmp_path, monkeypatch, isolated_registry, source,
                                                      message):
    name = f"wf_broken_{IMPORT_FAILURES.index((source, message))}"
    write(tmp_path / "mods" / f"{name}.py", source)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    out = tmp_path / "run"
    result = unlearn(cli_runner, f"{name}:unlearning", "unlearning", out=out)
    assert_clean_error(result, 2)
    assert f"cannot load plugin '{name}:unlearning'" in result.output and message in result.output
    logged_traceback(result)
    assert not out.exists()


def test_plugin_that_cannot_be_imported_exits_2(cli_runner, plugins):
    result = invoke(cli_runner, "--plugin", "tests.no_such_module:fn", "list", "methods")
    assert_clean_error(result, 2)
    assert "cannot load plugin" in result.output and "ModuleNotFoundError" in result.output


def test_fractional_weights_hand_the_plugin_the_top_weighted_set():
    from worstforget.methods.plugin import top_weighted

    w = torch.tensor([0.1, 0.3, 0.3, 0.2, 0.1])  # Σw = 1.0: one sample, the first of the largest
    assert top_weighted(w).sum() == 1 and bool(top_weighted(w)[1] | top_weighted(w)[2])
    binary = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    assert torch.equal(top_weighted(binary), binary.bool())
    uniform = torch.full((10,), 0.3)  # the search's start: m = 3 of 10, never an empty set
    assert int(top_weighted(uniform).sum()) == 3
