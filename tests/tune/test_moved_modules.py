"""The old import paths of tune's moved modules (tune/moved_modules.py): a pickle written before the
move, naming a class by its old module, reads back as the class at the new path."""
from __future__ import annotations

import importlib
import pickle

import pytest

from tune.moved_modules import MOVED


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_old_path_imports_the_module_at_its_new_path(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


@pytest.mark.parametrize("old, name, new", [
    ("tune.trial_tracking", "TrialTracking", "tune.tracking.trial_callback"),  # a search's callback
    ("tune.space_schema", "SearchSpace", "tune.spaces.schema"),               # held by its searcher
    ("tune.tracking", "SearchTracking", "tune.tracking.runs"),                # held by the callback
    ("tune.spaces", "DefineByRun", "tune.spaces.conditions"),                 # the searcher's space
])
def test_a_pickle_naming_an_old_path_reads_back_as_the_moved_class(old, name, new):
    data = f"c{old}\n{name}\n.".encode()  # protocol 0: a global reference by module path, as Ray stores it
    assert pickle.loads(data) is getattr(importlib.import_module(new), name)


def test_a_name_that_never_existed_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError, match="tune.no_such_module"):
        importlib.import_module("tune.no_such_module")
