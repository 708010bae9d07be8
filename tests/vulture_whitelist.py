"""Names in autotune/ that are used where vulture cannot see it (tests/test_dead_code.py reads this file; nothing
imports it). Vulture marks a name used when it appears anywhere, so ``_.name`` below is enough. Each entry says
who uses it; nothing here is dead, and an entry goes when its use goes. Framework hooks recognised by their
decorator (click commands, pydantic validators) are in the test's IGNORE_DECORATORS instead."""
# ruff: noqa
# mypy: ignore-errors

# click calls ParamType.convert for every option of that type (cli/common.py DurationType).
_.convert

# pydantic reads a model's class-level configuration (space.py ParamSpec, _SpaceFile).
_.model_config

# Record fields read by name through as_dict() (engines/base.py StartupInfo: the launcher writes the startup
# figures into the trial record; memory.py MemoryPlan: trial.py writes the memory plan into the trial record).
_.model_memory_gib
_.model_load_s
_.available_kv_gib
_.max_concurrency_len
_.graph_memory_gib
_.engine_init_s
_.reserve_gib_per_gpu

# Used from outside the package.
_.configure  # loadgen/fakeserver.py FakeServer.configure: the tests' fake server, per-test behaviour
_.grid  # space.py SearchSpace.grid: benchmarks/tuning_cost.py and tests/test_moe.py enumerate a finite space
