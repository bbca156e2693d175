"""Every command's --help: each flag has a sentence, and no default reads "None"."""
from __future__ import annotations

import argparse
import importlib

import pytest

COMMANDS = ["stvit.train", "stvit.profile", "stvit.data.__main__", "stvit.export", "stvit.model.__main__", "stvit.tune",
            "stvit.cv"]


def parsers(module: str) -> list[argparse.ArgumentParser]:
    """The command's parser and its sub-commands' parsers."""
    mod = importlib.import_module(module)
    top = (getattr(mod, "build_parser", None) or mod.parser)()
    subs = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [top] + [p for s in subs for p in s.choices.values()]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_flag_says_what_it_does(module):
    for p in parsers(module):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and len(action.help) > 15, f"{p.prog} {name}: no sentence"
        text = p.format_help()
        assert "(default: None)" not in text and "default: None" not in text, p.prog


def test_train_help_gives_the_defaults_of_the_chosen_preset(capsys):
    from stvit import config, train

    for name in config.PRESETS:
        with pytest.raises(SystemExit):
            train.build_parser(["--preset", name, "--device", "cpu"]).parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        cfg = config.preset(name)
        assert f"epochs of fine-tuning; default: {cfg.finetune.epochs}" in text
        assert f"default: {cfg.pretrain.epochs}" in text and f"the {name} preset on cpu" in text
