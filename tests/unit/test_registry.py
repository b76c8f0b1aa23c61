"""The method registry: each method's declaration is the one source of its facts (settings, labels, order,
low rank, state bytes), light to import, and the Hydra schema of its conf/method/<name>.yaml."""

import dataclasses
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gnlorp.checks import check_config
from gnlorp.errors import UserError
from gnlorp.methods import LOW_RANK, METHODS, SPECS, MethodConfig, get_method, label
from gnlorp.schema import GaLoreFamily, LoRAFamily, MethodSettings

from conftest import CONF, ROOT, compose


def _compose(*overrides):
    return compose(list(overrides))


def test_every_method_module_declares_its_facts_and_functions():
    assert set(METHODS) >= {"full", "lora", "dora", "galore", "gradnormlorp"}
    assert list(METHODS) == sorted(METHODS, key=lambda n: SPECS[n].order)
    for name, spec in SPECS.items():
        assert spec.name == name and issubclass(spec.settings, MethodSettings)
        assert spec.settings().name == name
        module = get_method(name)
        for fn in ("prepare", "build_optimizer", "merge", "state_bytes"):
            assert callable(getattr(module, fn)), (name, fn)
        assert (CONF / "method" / f"{name}.yaml").exists()
        assert all(getattr(spec.labels, t) for t in ("glue", "c4", "memory"))
    colors = [spec.color for spec in SPECS.values()]
    assert len(set(colors)) == len(colors), "two methods share a plot colour"
    assert "full" not in LOW_RANK and {"lora", "galore", "gradnormlorp"} <= set(LOW_RANK)
    assert issubclass(SPECS["galore"].settings, GaLoreFamily) and issubclass(SPECS["lora"].settings, LoRAFamily)
    assert label("full", "memory") == "AdamW" and label("unknown", "glue") == "unknown"


def test_registry_and_declarations_import_without_torch():
    code = ("import sys, gnlorp.methods, gnlorp.checks, gnlorp.identity, gnlorp.schema; "
            "bad = [m for m in ('torch', 'peft', 'transformers', 'bitsandbytes') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["full", "lora", "dora", "galore", "gradnormlorp"])
def test_composed_method_is_its_settings_class_with_only_its_keys(name):
    cfg = _compose(f"method={name}")
    assert OmegaConf.get_type(cfg.method) is SPECS[name].settings
    assert set(cfg.method) == {f.name for f in dataclasses.fields(SPECS[name].settings)}
    assert cfg.method.name == name


def test_another_methods_key_and_a_mistyped_value_are_refused_while_composing():
    with pytest.raises(ConfigCompositionException, match="update_proj_gap"):
        _compose("method=lora", "method.update_proj_gap=3")
    with pytest.raises(ConfigCompositionException, match="lora_alpha"):
        _compose("method=galore", "method.lora_alpha=3")
    with pytest.raises(ConfigCompositionException):
        _compose("method=galore", "method.update_proj_gap=abc")
    assert _compose("method=galore", "method.update_proj_gap=7").method.update_proj_gap == 7


def test_checks_walk_the_chosen_methods_own_fields():
    cfg = _compose("method=galore", "method.proj_type=bogus")
    with pytest.raises(UserError, match=r"method.proj_type='bogus' is not accepted"):
        check_config(cfg)
    cfg = _compose("method=lora", "method.lora_dropout=1.5")
    with pytest.raises(UserError, match=r"method.lora_dropout=1.5 is out of range"):
        check_config(cfg)


def test_method_name_must_agree_with_the_method_group():
    with pytest.raises(UserError, match=r"method.name='lora' does not match the method group \(galore\)"):
        check_config(_compose("method=galore", "method.name=lora"))


def test_an_experiment_sets_the_galore_familys_T_without_breaking_other_methods():
    for method, expected in (("galore", 500), ("gradnormlorp", 500)):
        assert _compose("experiment=glue_roberta", f"method={method}").method.update_proj_gap == expected
    assert "update_proj_gap" not in _compose("experiment=glue_roberta", "method=lora").method
    assert _compose("method=galore").method.update_proj_gap == 200


def test_method_config_holds_the_run_values_and_the_methods_own_settings_with_its_defaults():
    c = MethodConfig(name="galore", lr=0.5, rank=4, update_proj_gap=9)
    assert (c.lr, c.rank, c.update_proj_gap, c.proj_type, c.eps) == (0.5, 4, 9, "std", 1e-6)
    lora = MethodConfig(name="lora", rank=4, update_proj_gap=9)  # another method's key: does not apply
    assert not hasattr(lora, "update_proj_gap") and lora.eps == 1e-8 and lora.lora_alpha == 16.0
    with pytest.raises(TypeError, match="bogus"):
        MethodConfig(name="lora", bogus=1)


# ----------------------------------------------------------------------------- the method contract
def _fake_method(name="fake", drop=(), **replace):
    """A method module like lora's, registered as gnlorp.methods.<name>, without the functions in `drop`."""
    import types

    from gnlorp.methods.spec import REQUIRED, MethodSpec

    module = types.ModuleType(f"gnlorp.methods.{name}")
    module.METHOD = MethodSpec(name, SPECS["lora"].settings, SPECS["lora"].labels, order=99, low_rank=True, color="k")
    for hook in REQUIRED:
        setattr(module, hook, getattr(get_method("lora"), hook))
    for hook in drop:
        delattr(module, hook)
    for key, value in replace.items():
        setattr(module, key, value)
    return module


def test_every_registered_method_satisfies_the_contract():
    from gnlorp.methods import Method, check_method
    from gnlorp.methods.spec import OPTIONAL, REQUIRED

    assert REQUIRED == ("prepare", "build_optimizer", "merge", "state_bytes")
    assert OPTIONAL == ("loop_hooks", "other_bytes")
    for name in METHODS:
        module = get_method(name)
        assert isinstance(module, Method)
        assert check_method(module) is SPECS[name]


@pytest.mark.parametrize("hook", ["prepare", "build_optimizer", "merge", "state_bytes"])
def test_registering_a_method_without_a_required_function_is_refused_naming_both(monkeypatch, hook):
    from gnlorp import methods
    from gnlorp.methods import MethodContractError

    monkeypatch.setitem(sys.modules, "gnlorp.methods.fake", _fake_method(drop=[hook]))
    with pytest.raises(MethodContractError, match=rf"method 'fake' .* lacks the required function {hook}\("):
        methods._load((*methods._MODULES, "fake"))
    monkeypatch.setitem(sys.modules, "gnlorp.methods.fake", _fake_method())
    assert "fake" in methods._load((*methods._MODULES, "fake"))  # complete, it registers


def test_a_method_whose_functions_cannot_take_the_callers_arguments_is_refused():
    from gnlorp.methods import MethodContractError, check_method

    with pytest.raises(MethodContractError, match=r"method 'fake': state_bytes\(model, cfg\) cannot be called"):
        check_method(_fake_method(state_bytes=lambda model, cfg: 0))
    with pytest.raises(MethodContractError, match=r"method 'fake': loop_hooks.* cannot be called as loop_hooks\("):
        check_method(_fake_method(loop_hooks=lambda model, optimizer, cfg, total_steps: {}))
    with pytest.raises(MethodContractError, match=r"method 'fake': other_bytes is not callable"):
        check_method(_fake_method(other_bytes=3))
    with pytest.raises(MethodContractError, match=r"method 'fake' .*defines no METHOD"):
        check_method(_fake_method(METHOD=None))
    with pytest.raises(MethodContractError, match=r"declares METHOD.name='lora'"):
        check_method(_fake_method(METHOD=SPECS["lora"]))
    # an optional function is optional; with **_ it takes the keywords it does not use
    check_method(_fake_method(loop_hooks=lambda model, optimizer, cfg, total_steps, **_: {}))


def test_optional_hooks_are_looked_up_by_their_declared_names():
    from gnlorp.methods import optional_hook

    assert optional_hook(get_method("switchlora"), "loop_hooks") is get_method("switchlora").loop_hooks
    assert optional_hook(get_method("full"), "loop_hooks") is None
    with pytest.raises(ValueError, match="not an optional method hook"):
        optional_hook(get_method("full"), "loop_hook")
