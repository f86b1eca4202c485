"""The public API: one rule for every entry point (a module, or a registry name / model spec), all importable
from the package root, and no function hiding the module it lives in."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

import branchgraph


def test_no_function_shadows_a_module() -> None:
    """``branchgraph.X.Y`` is a module or it is not: a package attribute named like one of its submodules would
    make ``import branchgraph.X.Y`` and ``branchgraph.X.Y`` two different things."""
    for info in pkgutil.walk_packages(branchgraph.__path__, "branchgraph."):
        importlib.import_module(info.name)
    shadows = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("branchgraph") or not hasattr(module, "__path__"):  # packages hold re-exports
            continue
        for attr, value in vars(module).items():
            if f"{name}.{attr}" in sys.modules and not isinstance(value, types.ModuleType):
                shadows.append(f"{name}.{attr}")
    assert not shadows, shadows


def test_every_entry_point_takes_a_name_or_a_module(tmp_path) -> None:
    """``optimize``, ``plan``, ``branches``, ``summary``, ``compare`` and ``draw`` from the package root, each given
    a registry name (with ``model_kwargs`` and ``input_size``) and the same net as a module, from one call each."""
    import torch

    import branchgraph as bg

    size, kwargs = (1, 28, 28), {"width": 0.125}
    torch.manual_seed(0)
    module = bg.create_model("googlenet-fmnist", **kwargs)
    for model in ("googlenet-fmnist", module):
        options = {"model_kwargs": kwargs} if isinstance(model, str) else {}
        optimised, report = bg.optimize(model, size, mode="eval", **options)
        assert report.ok is True and isinstance(optimised, torch.nn.Module)
        assert bg.optimize(model, size, mode="eval", verify=False, **options)[1].ok is None  # not checked: not ok
        _, checkpoints = bg.plan(model, size, budget=0.3, batch=4, measure=False, compare_rounds=0, **options)
        assert checkpoints.regions and checkpoints.saved_bytes <= checkpoints.budget_bytes
        plain, planned = checkpoints.compared
        assert planned.forward_bytes < 0.5 * plain.forward_bytes and "compared" not in checkpoints.to_dict()
        forks = bg.branches(model, size, **options)
        assert len(forks) >= 9 and all(f.sum_error < 1e-12 for f in forks)
        table = bg.summary(model, size, batch=2, **options)
        assert table.total["params"] == sum(p.numel() for p in module.parameters())
        drawing = bg.draw(model, size, tmp_path / "net.dot", **options)
        assert drawing.output.read_text().startswith("digraph") and drawing.blocks == 9
    side_by_side = bg.compare(module, "googlenet-fmnist", size, model_kwargs=kwargs)
    assert all(row["ratio"] == 1 for row in side_by_side.rows() if row["key"] in ("params", "macs"))
    assert next(module.parameters()).dtype == torch.float32  # branches works on a float64 copy


def test_a_module_without_an_input_size_is_refused_naming_the_parameter() -> None:
    import pytest
    import torch

    import branchgraph as bg
    from branchgraph.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        bg.optimize(torch.nn.Conv2d(1, 2, 3))
    assert err.value.param == "input_size" and "input_size" in str(err.value)


def test_nested_joins_get_a_heading_each_whose_shares_add_up() -> None:
    """Inception-v3's Mixed_7b joins split 1x3/3x1 pieces inside its own concatenation: each join is a block of
    its own in the summary (named by the module and the join), and each block's branch shares add up to 1."""
    from collections import defaultdict

    import pytest
    import torch

    import branchgraph as bg
    from tests.nets import InceptionV3Like

    torch.manual_seed(0)
    table = bg.summary(InceptionV3Like(width=0.125), (3, 75, 75), batch=2)
    shares: dict[str, float] = defaultdict(float)
    for row in table.branches:
        shares[row.block] += row.macs_share
    assert {"Mixed_7b (cat_9)", "Mixed_7b (cat_10)", "Mixed_7b (cat_11)"} <= set(shares)
    for block, total in shares.items():
        assert total == pytest.approx(1.0, abs=1e-9) or total == 0.0, block


def test_a_net_too_small_for_the_images_is_told_to_resize_and_one_with_other_channels_in_chans() -> None:
    import pytest

    from branchgraph.errors import ConfigError
    from branchgraph.models.spec import check_fits
    from tests.nets import InceptionV3Like

    with pytest.raises(ConfigError) as small:
        check_fits(InceptionV3Like(in_chans=1, width=0.125), "inception", (1, 28, 28), 10)
    assert small.value.param == "resize" and "set resize to" in str(small.value) and "in_chans" not in str(small.value)
    with pytest.raises(ConfigError) as channels:
        check_fits(InceptionV3Like(in_chans=3, width=0.125), "inception", (1, 96, 96), 10)
    assert 'in_chans": 1' in str(channels.value) and "takes 3-channel images" in str(channels.value)


def test_a_spec_without_an_input_size_says_it_is_from_outside_the_registry() -> None:
    import pytest

    import branchgraph as bg
    from branchgraph.errors import ConfigError
    from tests.conftest import REPO

    with pytest.raises(ConfigError) as err:
        bg.summary(f"{REPO}/tests/nets.py:SKNetLike")
    assert "comes from outside the registry" in str(err.value) and "not in the registry" not in str(err.value)


def test_run_directories_of_a_spec_have_no_colon(tmp_path) -> None:
    from branchgraph.training.config import TrainConfig
    from branchgraph.training.distributed import DistInfo
    from branchgraph.training.run_state import make_run_dir

    path = make_run_dir(TrainConfig(model="timm:inception_v3", out_dir=str(tmp_path)), DistInfo())
    assert path.name.endswith("-timm-inception_v3") and ":" not in path.name and path.parent == tmp_path


def test_plan_regions_are_named_by_module_paths() -> None:
    """DenseNet-style norm-act modules trace to getattr/eq nodes (their rank assertion): a plan's regions are
    named by the modules they start and end in, not by such nodes."""
    import torch

    import branchgraph as bg
    from tests.nets import DenseNetLike

    torch.manual_seed(0)
    _, p = bg.plan(DenseNetLike(growth=4, layers=(2, 2)), (3, 16, 16), budget=0.2, batch=4, cost="macs",
                   measure=False)
    names = [r.name for r in p.regions]
    assert names and not any("getattr" in n or n.startswith("eq") for n in names), names
    assert any("blocks.0" in n for n in names)


def test_the_package_imports_torch_only_when_used() -> None:
    """``import branchgraph`` and ``branchgraph --help`` stay light; names and subpackages load on first use."""
    import subprocess

    code = ("import sys, branchgraph as bg; assert 'torch' not in sys.modules; "
            "from branchgraph.cli import build_parser; build_parser(''); assert 'torch' not in sys.modules; "
            "print(bg.models.model_info('googlenet-d2l').input_size, bg.Mode.EVAL, callable(bg.summary))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "(1, 96, 96) eval True", r.stderr
