"""Names in autotune/ that are used where vulture cannot see it (tests/test_dead_code.py reads this file; nothing
imports it). Vulture marks a name used when it appears anywhere, so ``_.name`` below is enough. Each entry says
who uses it; nothing here is dead, and an entry goes when its use goes. Framework hooks recognised by their
decorator (click commands, pydantic validators) are in the test's IGNORE_DECORATORS instead."""
# ruff: noqa
# mypy: ignore-errors

# Optuna's ask reads Study.sampler, which study.open_study replaces on a resume and in a worker (study.sampler_seed).
_.sampler

# click calls ParamType.convert for every option of that type (cli/common.py ParsedType).
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
# vLLM's split of a rank's memory budget (StartupInfo): kept in the trial record the same way, and read by
# benchmarks/moe_layouts_table.py
_.gpu_memory_utilization
_.memory_budget_gib
_.peak_activation_gib
_.graph_memory_estimate_gib
_.profile_run_s  # read by benchmarks/vlm_images_table.py

# Fields of the records a study stores, written to Optuna's storage through dataclasses.fields() (records.py)
# and to the profile's YAML through pydantic's model_dump (profile.py): users, `autotune best` and export read them.
_.p99_ttft_ms
_.p99_tpot_ms
_.p99_itl_ms
_.p99_e2el_ms
_.memory
_.baseline_trial
_.baseline_output_tok_s
_.baseline_meets_limit
_.gain_output_tok_s
_.gain_pct
_.gain_pct_low
_.gain_pct_high
_.half_width
_.records_version
_.gpu_name
_.gpu_memory
_.autotune
_.vllm
_.torch
_.maximize
_.mean_ms
_.max_ms
_.values_ms
_.autotune_profile
_.created_at
_.search_stop_reason
_.trials_run  # records.py RunRecord: what one invocation ran, for people reading the study

# wsgiref's request handler calls log_message for every request (dashboard.py _QuietHandler silences it).
_.log_message

# click's Group calls list_commands, get_command and format_commands (cli/__init__.py _LazyGroup overrides them).
_.list_commands
_.get_command
_.format_commands

# asyncio's BaseEventLoop reads _clock_resolution to fire timers due within it (sim/vclock.py sets it).
_._clock_resolution

# Used from outside the package.
_.configure  # testing/fakeserver.py FakeServer.configure: the tests' fake server, per-test behaviour
_.grid  # space.py SearchSpace.grid: benchmarks/tuning_cost.py and tests/test_moe.py enumerate a finite space
