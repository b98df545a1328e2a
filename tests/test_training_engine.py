"""hanet_fast.training as a library: TrainConfig (the CLI's settings, defaults and checks),
Trainer.fit() from Python, hooks that see every step, the progress report, and the layout rules
(no command-line module imports another; no function over 80 lines)."""

import argparse
import ast
import dataclasses
import json
import os
import time

import pytest
import torch

from hanet_fast.train import build_parser, main
from hanet_fast.training import ConfigError, Hook, TrainConfig, Trainer
from hanet_fast.training.presets import PRESETS
from hanet_fast.training.reporters import ConsoleReporter

from test_train import ROOT, TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# TINY of test_train as TrainConfig fields.
TINY_CONFIG = dict(synthetic_size=(48, 96), crop_size=(32, 64), synthetic_train=16, synthetic_val=2, batch_size=2,
                   hanet_rows=4, val_every=0, num_vis=1, no_progress=True, threads=1, workers=0)
CLI_MODULES = ("train", "evaluate", "infer", "analyze", "export")


def test_config_fields_are_the_cli_settings_with_their_defaults():
    parser = build_parser()
    dests = {a.dest: a.default for a in parser._actions if a.dest not in ("help", "print_config")}
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(fields) == set(dests)
    preset = PRESETS[fields["preset"]]
    for name, default in dests.items():
        expected = preset[name] if default == argparse.SUPPRESS else default
        assert fields[name] == expected, name


def test_every_dataset_name_has_a_factory():
    from hanet_fast.data import DATASETS
    from hanet_fast.training.config import DATASET_NAMES

    assert DATASET_NAMES == tuple(DATASETS) and "mapillary" in DATASET_NAMES


def test_bad_config_values_raise_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="log_every"):
        TrainConfig(log_every=0)
    with pytest.raises(ValueError, match="scale_min"):
        TrainConfig(scale_min=2.0, scale_max=1.0)
    with pytest.raises(ConfigError, match="data_root"):
        TrainConfig.from_preset("train_r101_os8_hanet")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_preset("no-such-preset")
    with pytest.raises(TypeError, match="learning_rate"):
        TrainConfig.from_preset("synthetic-mobilenet", learning_rate=0.1)
    cfg = TrainConfig.from_preset("train_m_os16_hanet", data_root="/data", iters=10)
    assert (cfg.backbone, cfg.crop_size, cfg.iters, cfg.data_root) == ("mobilenet_v2", (768, 768), 10, "/data")


class _Recorder(Hook):
    def __init__(self):
        self.steps, self.validations, self.checkpoints, self.events = [], [], [], []

    def after_setup(self, trainer):
        self.events.append("setup")

    def before_train(self, trainer):
        self.events.append("train")

    def after_step(self, trainer, step):
        assert step.iteration == trainer.iteration and torch.isfinite(torch.tensor(step.loss))
        self.steps.append((step.iteration, step.images, sorted(step.lrs)))

    def after_validation(self, trainer, result):
        self.validations.append((result.iteration, result.final, result.images))

    def after_checkpoint(self, trainer, path):
        self.checkpoints.append((trainer.iteration, os.path.basename(path)))

    def after_train(self, trainer, metrics):
        self.events.append(("done", metrics["iteration"]))


@pytest.fixture(scope="module")
def python_run(tmp_path_factory):
    """``Trainer.fit()`` from Python with a hook, and the same run from the command line."""
    tmp = tmp_path_factory.mktemp("engine")
    recorder = _Recorder()
    config = TrainConfig(**dict(TINY_CONFIG, val_every=2), iters=4, ckpt_every=3, out=str(tmp / "python"),
                         cache_dir=str(tmp / "cache"))
    given = dataclasses.asdict(config)
    metrics = Trainer(config, hooks=[recorder]).fit()
    assert dataclasses.asdict(config) == given  # the run works on its own copy
    main(TINY + ["--iters", "4", "--val-every", "2", "--ckpt-every", "3", "--workers", "0", "--out", str(tmp / "cli"),
                 "--cache-dir", str(tmp / "cache")])
    return config, metrics, recorder, tmp


def test_trainer_fit_from_python_returns_the_metrics_of_the_cli(python_run):
    config, metrics, _, tmp = python_run
    assert set(metrics) >= {"mIoU", "pixel_acc", "iou", "iteration"} and metrics["iteration"] == 4
    assert metrics == json.load(open(tmp / "python" / "metrics.json"))
    cli = json.load(open(tmp / "cli" / "metrics.json"))
    assert {k: v for k, v in cli.items() if k != "train_seconds"} == \
        {k: v for k, v in metrics.items() if k != "train_seconds"}
    a = torch.load(tmp / "python" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp / "cli" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_hook_sees_every_step_validation_and_checkpoint(python_run):
    _, _, recorder, _ = python_run
    assert recorder.steps == [(i, 2, ["hanet", "main"]) for i in (1, 2, 3, 4)]
    assert recorder.validations == [(2, False, 2), (4, True, 2)]
    assert recorder.checkpoints == [(3, "checkpoint.pt"), (4, "checkpoint.pt")]
    assert recorder.events == ["setup", "train", ("done", 4)]


def test_validation_has_its_own_progress_and_is_left_out_of_the_eta(tmp_path, capsys):
    """The training bar's clock (ETA, images/s) is moved past the time validation took."""
    reporter = ConsoleReporter(progress=True)

    class _Run:  # what the reporter reads of a trainer
        out, start, stop, iteration = str(tmp_path), 0, 10, 1
        config = TrainConfig(batch_size=2)
        process = type("P", (), {"world": 1})()

    run = _Run()
    reporter.before_train(run)
    start_t, t0 = reporter.bar.start_t, reporter.t0
    reporter.before_validation(run, 3, False)
    assert reporter.val_bar is not None and reporter.val_bar.total == 3
    reporter.after_validation_batch(run, 3)
    time.sleep(0.3)
    from hanet_fast.training.validation import ValidationResult
    reporter.after_validation(run, ValidationResult(1, [0.5] * 19, 0.5, 0.9, 3))
    assert reporter.bar.start_t - start_t >= 0.3 and reporter.t0 - t0 >= 0.3
    assert reporter.val_bar is None
    reporter.after_loop(run)
    assert "writing the checkpoint of iteration 1" in capsys.readouterr().out


def _modules():
    package = os.path.join(ROOT, "hanet_fast")
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), ast.parse(open(path).read())


def test_no_command_line_module_imports_another():
    cli = {f"hanet_fast.{name}" for name in CLI_MODULES}
    offenders = []
    for path, tree in _modules():
        module = path[:-3].replace(os.sep, ".")
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [(path, n) for n in names if n in cli and n != module]
    assert offenders == []


def test_no_function_is_over_80_lines():
    long = [(path, node.name, node.end_lineno - node.lineno + 1) for path, tree in _modules()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name != "build_parser" and node.end_lineno - node.lineno + 1 > 80]
    assert long == []
