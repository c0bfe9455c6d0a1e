"""Bad CLI arguments and bad params: a non-zero exit and a message naming the option/key and what to change.

Two tables:
- every rxrec command's numeric / enum / id options and `--set` with bad values, run through
  the real Typer app (CliRunner): each must exit non-zero before doing any work, with a message
  that names the option or key and the rule;
- every constrained field of params.yaml (read from the pydantic settings models, so a new field
  is covered automatically) set just outside its bound, plus wrong types, unknown keys and
  malformed files through RXREC_PARAMS: each must fail with SettingsError naming `section.key`,
  the bound, the value given and where to change it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.core.config import PARAMS_FILE, SettingsError, load_settings, section_types

# (args, texts the message must contain, a short name for the report)
CLI_CASES: list[tuple[list[str], list[str]]] = [
    (["stage", "nope"], ["unknown stage 'nope'", "stages are"]),
    (["stage", "generate", "--set", "data.n_products=5"], ["data.n_products must be >= 20, got 5", "--set"]),
    (["stage", "train_gpt4rec", "--set", "gpt4rec.max_len=-3"], ["gpt4rec.max_len must be >= 2, got -3", "params.yaml"]),
    (["stage", "train_gpt4rec", "--set", "gpt4rec.max_len=4096"], ["gpt4rec.max_len must be <= 512, got 4096"]),
    (["stage", "generate", "--sett", "data.seed=1"], ["No such option", "--sett"]),
    (["run", "--from", "nope"], ["--from 'nope' is not a stage", "stages are"]),
    (["run", "--to", "deploy2"], ["--to 'deploy2' is not a stage"]),
    (["run", "--set", "gpt4rec.epochs=zero"], ["gpt4rec.epochs must be an integer, got 'zero'"]),
    (["run", "--set", "epochs=2"], ["must look like section.key=value"]),
    (["run", "--set", "gpt4rec.lr=[1"], ["gpt4rec.lr", "is not a YAML value"]),
    (["run", "--set", "similar.method=bert"], ["similar.method must be one of", "got 'bert'"]),
    (["run", "--set", "nosection.k=1"], ["nosection is not a params section", "sections are"]),
    (["run", "--set", "gpt4rec.nope=1"], ["gpt4rec.nope is not a setting", "the keys of gpt4rec are"]),
    (["run", "--set", "data.description_share=1.5"], ["data.description_share must be <= 1, got 1.5"]),
    (["run", "--set", "evaluate.mask_seen=maybe"], ["evaluate.mask_seen must be true or false"]),
    (["recommend", "--session", "1,x"], ["--session must be comma-separated item ids", "'x' is not one"]),
    (["recommend", "--session", "1,-2"], ["--session", "'-2' is not one"]),
    (["recommend", "--session", "99999999999999999999"], ["--session: item id 99999999999999999999 is out of range"]),
    (["recommend", "--session", "1", "--purchased", "a"], ["--purchased must be comma-separated item ids"]),
    (["recommend", "--session", "1,2", "--events", "view"], ["--events has 1 kinds but --session has 2 items"]),
    (["recommend", "--session", "1", "--events", "browse"], ["--events: 'browse' is not an event kind",
                                                            "view|click|add_to_cart|purchase"]),
    (["recommend", "--session", "1", "--events", "²"], ["--events: '²' is not an event kind"]),
    (["recommend", "--session", "1", "--protocol", "ftp"], ["--protocol must be http or grpc, got 'ftp'"]),
    (["recommend", "--session", "1", "--model", "gpt4rec", "--protocol", "grpc"], ["--model gpt4rec is the raw model, asked over HTTP"]),
    (["recommend", "--session", "1", "--placement", "checkout"], ["placement 'checkout' is not one of", "home"]),
    (["similar", "--item", "abc"], ["Invalid value for '--item'", "valid integer"]),
    (["similar", "--item", "0"], ["Invalid value for '--item'", "greater than or equal to 1"]),
    (["similar", "--item", "3", "--protocol", "udp"], ["--protocol must be http or grpc, got 'udp'"]),
    (["export", "--profile", "tpu"], ["--profile must be cpu or gpu, got 'tpu'"]),
    (["export", "--profile", "cpu", "--variant", "tensorrt_plan"], ["--variant applies to --profile gpu"]),
    (["export", "--profile", "gpu", "--variant", "onnx"], ["--variant", "got 'onnx'"]),
    (["export", "--profile", "gpu", "--set", "gpu.max_batch_size=0"], ["gpu.max_batch_size must be >= 1, got 0"]),
    (["promote"], ["rxrec promote --rollback"]),
    (["promote", "--rollback", "--no-deploy", "--set", "gate.min_improvement=-1"],
     ["gate.min_improvement must be >= 0, got -1"]),
    (["lineage", "gpt4rec@champion", "--set", "serve.http_port=70000"], ["serve.http_port must be <= 65535, got 70000"]),
    (["serve", "start", "--set", "serve.instance_count=0"], ["serve.instance_count must be >= 1, got 0"]),
    (["serve", "start", "--set", "serve.startup_timeout_s=-5"], ["serve.startup_timeout_s must be > 0, got -5"]),
    (["summary", "--elapsed", "soon"], ["Invalid value for '--elapsed'", "valid number"]),
]


def _output(result) -> str:
    text = result.output or ""
    try:
        text += result.stderr or ""
    except ValueError:  # older click: stderr not captured separately
        pass
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


@pytest.mark.reliability(kind="bad-input", name="CLI options and --set with bad values, every command")
def test_every_command_refuses_bad_options_with_a_message_naming_them(ledger, tmp_path, monkeypatch) -> None:
    from pipelines.cli import app

    monkeypatch.setenv("RXREC_WORKDIR", str(tmp_path))  # nothing a refused command could write lands in the repo
    monkeypatch.setenv("COLUMNS", "200")  # Typer's usage box wraps long messages otherwise
    runner = CliRunner()
    commands = set()
    failures = []
    for args, expected in CLI_CASES:
        result = runner.invoke(app, args)
        text = _output(result)
        commands.add(" ".join(args[:2]) if args[0] == "serve" else args[0])
        if result.exit_code == 0 or not all(e in text for e in expected):
            failures.append(f"rxrec {' '.join(args)} -> exit {result.exit_code}: {text[-300:]}")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            failures.append(f"rxrec {' '.join(args)} crashed: {result.exception!r}")
    assert not failures, "\n".join(failures)
    assert not any(tmp_path.iterdir()), f"a refused command wrote {list(tmp_path.iterdir())}"
    ledger.record(
        cases=len(CLI_CASES),
        outcome=(f"{len(CLI_CASES)} bad invocations over {len(commands)} commands ({', '.join(sorted(commands))}): "
                 "every one exited non-zero before doing work, "
                 "with a message naming the option or key, the rule and the value given"),
        nothing_lost=True, nothing_promoted=True, commands=sorted(commands),
    )


def _violations() -> list[tuple[str, str, object, str]]:
    """(section, key, a value just outside a bound, the bound text) for every constrained field."""
    out = []
    for section, model in section_types().items():  # core's sections and the model families'
        for key, field in model.model_fields.items():
            integer = field.annotation is int
            for meta in field.metadata:
                for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    bound = getattr(meta, attr, None)
                    if bound is None:
                        continue
                    step = 1 if integer else (0.5 if abs(bound) >= 1 else 0.01)
                    value = bound - step if attr in ("ge", "gt") else bound + step
                    if attr in ("gt", "lt") and not integer:
                        value = bound  # exactly on an open bound
                    if attr == "gt" and integer:
                        value = bound
                    if attr == "lt" and integer:
                        value = bound
                    shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
                    out.append((section, key, value, f"must be {op} {shown}"))
    return out


@pytest.mark.reliability(kind="bad-input", name="params.yaml values out of range, of the wrong type, unknown keys")
def test_every_constrained_param_names_key_bound_and_fix(ledger, tmp_path) -> None:
    cases = _violations()
    assert len(cases) > 80, f"only {len(cases)} constrained fields found"
    checked = 0
    for section, key, value, rule in cases:
        with pytest.raises(SettingsError) as refused:
            load_settings(overrides={section: {key: value}})
        message = str(refused.value)
        assert f"{section}.{key} {rule}, got {value!r}" in message, message
        assert f"--set {section}.{key}=" in message and "params.yaml" in message, message
        checked += 1
    # wrong types (one per type family) and unknown names
    type_cases = [
        ({"gpt4rec": {"epochs": "many"}}, "gpt4rec.epochs must be an integer, got 'many'"),
        ({"gpt4rec": {"lr": "fast"}}, "gpt4rec.lr must be a number, got 'fast'"),
        ({"gpt4rec": {"use_meta": "perhaps"}}, "gpt4rec.use_meta must be true or false"),
        ({"similar": {"method": "bert"}}, "similar.method must be one of"),
        ({"meta_prod2vec": {"fields": "tags"}}, "meta_prod2vec.fields must be a list"),
        ({"meta_prod2vec": {"fields": ["tags", "colour"]}}, "meta_prod2vec.fields.1 must be one of"),
        ({"graph": {"event_weights": [1, 2]}}, "graph.event_weights must be a mapping"),
        ({"mlflow": {"experiment": ["a"]}}, "mlflow.experiment must be a string"),
        ({"gpt4rec": {"max_lenght": 50}}, "gpt4rec.max_lenght is not a setting; the keys of gpt4rec are"),
        ({"gtp4rec": {"max_len": 50}}, "gtp4rec is not a params section; sections are"),
    ]
    for overrides, expected in type_cases:
        with pytest.raises(SettingsError, match=re.escape(expected)):
            load_settings(overrides=overrides)
        checked += 1
    # a params file with a bad value, an unknown key, a section that is not a mapping, broken YAML
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    files = {
        "bad_value": ({**raw, "gpt4rec": {**raw["gpt4rec"], "max_len": -3}},
                      "gpt4rec.max_len must be >= 2, got -3: change it in bad_value.yaml"),
        "unknown_key": ({**raw, "export": {**raw["export"], "topk": 5}}, "export.topk is not a setting"),
        "scalar_section": ({**raw, "serve": 8000}, "section 'serve' must be a mapping of key: value"),
    }
    for name, (content, expected) in files.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(SettingsError, match=re.escape(expected)):
            load_settings(path)
        checked += 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpt4rec:\n  max_len: [50\n")
    with pytest.raises(SettingsError, match="is not valid YAML"):
        load_settings(broken)
    not_text = tmp_path / "binary.yaml"
    not_text.write_bytes(b"\xff\xfe\x00gpt4rec")
    with pytest.raises(SettingsError, match="cannot be read|not valid YAML"):
        load_settings(not_text)
    checked += 2
    ledger.record(
        cases=checked,
        outcome=(f"{checked} bad params: {len(cases)} constrained fields (all of them) just past their bound, "
                 f"{len(type_cases)} wrong types / unknown names, {len(files) + 2} malformed params files: every one "
                 "refused with SettingsError naming section.key, the rule, the value and where to change it"),
        nothing_lost=True, nothing_promoted=True, constrained_fields=len(cases),
    )


def test_violations_cover_a_known_field() -> None:
    """The table is derived from the settings models: gpt4rec.max_len (ge=2, le=512) is in it both ways."""
    found = {(s, k, v) for s, k, v, _ in _violations()}
    assert ("gpt4rec", "max_len", 1) in found and ("gpt4rec", "max_len", 513) in found
    assert Path(PARAMS_FILE).is_file()
