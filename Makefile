# The README's commands. Everything installs into .venv/ in the repository root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ACKED := $(VENV)/bin/acked
# Debian packages the host needs: ZooKeeper for local clusters, debootstrap for the node image.
HOST_PACKAGES := zookeeper debootstrap
PYTEST_ARGS ?=
NIGHTLY_COLUMNS ?=
# What `make test` needs beyond that: a browser to open the reports in (tests/test_pytest_plugin.py).
TEST_PACKAGES := chromium

.PHONY: all venv host-deps test-deps image demo test test-fast nightly bench mutation clean

all: venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

host-deps:
	@missing=""; for p in $(HOST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	fi

test-deps:
	@$(MAKE) --no-print-directory host-deps HOST_PACKAGES="$(TEST_PACKAGES)"

image: venv host-deps
	$(ACKED) image build

demo: venv host-deps image
	$(ACKED) run --backend docker --nodes 3 --profile safe --nemesis kill,partition --time-limit 30

test: venv host-deps test-deps image
	$(VENV)/bin/pytest -p no:cacheprovider --durations=20 -n 2 --dist loadgroup $(PYTEST_ARGS)

# Everything but the docker tests (local processes: broker, ZooKeeper).
test-fast: venv
	$(VENV)/bin/pytest -p no:cacheprovider -m "not docker and not slow" $(PYTEST_ARGS)

# The whole reliability matrix, 120 s runs, three attempts per cell, then the other slow tests (.ci/nightly).
# NIGHTLY_COLUMNS=kill,pause runs a shard, as each job of .github/workflows/nightly.yml does.
nightly: venv host-deps image
	.ci/nightly $(NIGHTLY_COLUMNS)

bench: venv host-deps
	$(PY) bench/check_large.py
	$(PY) bench/produce.py

# Mutation testing of the broker's safety rules (issue 19; docs/broker.md "Mutation testing: survivors", figures in
# docs/benchmarks.md). Not part of `make test`. Whole replication.py, replica_manager.py and partition.py; of handlers.py
# the produce, fetch, ListOffsets, OffsetForLeaderEpoch and InitProducerId paths; of controller.py the election
# decisions. Runs at nice 19 on idle CPU; results stay in mutants/ (`.venv/bin/mutmut show NAME` shows one).
MUTATION_TARGETS := 'broker.replication.*' 'broker.replica_manager.*' 'broker.partition.*' \
	'broker.handlers.x_produce*' 'broker.handlers.x__produce_partition*' 'broker.handlers.x_fetch*' \
	'broker.handlers.x_list_offsets*' 'broker.handlers.x__list_offset*' 'broker.handlers.x_offset_for_leader_epoch*' \
	'broker.handlers.x_init_producer_id*' \
	'broker.controller.x_decide_elections*' 'broker.controller.x_decide_new_partitions*' \
	'broker.controller.x_unclean_election_enabled*' 'broker.controller.x_role_for*' 'broker.controller.x_leaderships_to_move*'

$(VENV)/.mutation-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test,mutation]'
	touch $@

mutation: $(VENV)/.mutation-installed
	rm -rf mutants    # a fresh run each time: figures that do not depend on an earlier run's cache
	time ACKED_HYPOTHESIS_PROFILE=mutation nice -n 19 $(VENV)/bin/mutmut run $(MUTATION_TARGETS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info
