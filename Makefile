# The two commands a new machine needs: `make run` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# What the service needs to run (make run), and, on top of it, what the tests, the benchmarks and the example need.
RUN_INSTALLED := $(VENV)/.installed-run
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-run services services-run tools run run-shop test check docs format bench bench-full clean \
	cluster cluster-stop

install: $(INSTALLED)

install-run: $(RUN_INSTALLED)

$(RUN_INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The example shop (examples/shop) is installed after orderlane, which it depends on.
$(INSTALLED): $(RUN_INSTALLED) pyproject.toml examples/shop/pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,bench,peers,otel]'
	$(BIN)/python -m pip install --quiet -e 'examples/shop[dev]'
	touch $@

services: install
	$(BIN)/python scripts/ensure_services.py --postgres

services-run: install-run
	$(BIN)/python scripts/ensure_services.py

# Debian's tools the tests and scripts run: installed with apt-get where this runs as root on a system that has it;
# anywhere else `make` installs nothing and says which tests will fail without each tool that is missing.
ifeq ($(shell command -v apt-get),)
NO_APT := no apt-get here
else ifneq ($(shell id -u),0)
NO_APT := apt-get needs root
endif
# Install a Debian package, updating the package lists first only if the install fails without.
apt-install = apt-get install -y -q $(1) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(1) >/dev/null 2>&1; }
# $(call tool,FOUND,PACKAGE,WHAT FAILS WITHOUT IT[,AFTER]): unless the shell test FOUND passes, install PACKAGE (then
# run AFTER) where apt-get can; if it is still missing, one line on stderr: what fails, and the command that installs it.
tool = $(1) || { $(if $(NO_APT),,$(call apt-install,$(2)) && { $(or $(4),true); } ||) \
	  echo "make: warning: $(2) is not installed ($(or $(NO_APT),apt-get failed)): $(3).\
	  Install it with: sudo apt-get install $(2)" >&2; }

# wrk, the HTTP load generator of the intake benchmark and of its check in the suite; jq, with which scripts/cluster
# reads rabbitmqctl's JSON; iptables, with which scripts/netns-cluster cuts a node off from its peers inside its
# network namespace; nginx, the proxy of deploy/nginx.conf that tests/test_proxy.py runs as a child process of its
# own. Only nginx's binary is wanted: apt starts the system's nginx on port 80 after installing it (unless
# policy-rc.d forbids it, as in Docker images), so that one is stopped at once and kept from starting at boot.
tools:
	@$(call tool,command -v wrk >/dev/null,wrk,tests/test_bench_runs.py fails and make bench cannot measure intake)
	@$(call tool,test -x /usr/sbin/nginx,nginx,tests/test_proxy.py fails,\
	  { invoke-rc.d nginx stop; update-rc.d nginx disable; } >/dev/null 2>&1; true)
	@$(call tool,command -v jq >/dev/null,jq,scripts/cluster cannot start the cluster and the cluster tests skip)
	@$(call tool,test -x /usr/sbin/iptables,iptables,tests/test_partition.py skips)

run: services-run
	HOST=$(HOST) PORT=$(PORT) scripts/run-dev

# make run with the example shop's order model and handler (examples/shop), writing into PostgreSQL at
# SHOP_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test).
run-shop: services-run
	$(BIN)/python -m pip install --quiet -e examples/shop
	$(BIN)/python scripts/ensure_services.py --postgres
	ORDERLANE_ORDER_MODEL=shop.models:ShopOrder ORDERLANE_HANDLER=shop.handler:handle HOST=$(HOST) PORT=$(PORT) \
	  scripts/run-dev

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml) into site/, strict as tests/test_docs.py builds it: a broken link fails.
docs: install
	$(BIN)/mkdocs build --strict

test: services tools check
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

# A quick run of every scenario (how long: docs/benchmarks.md, "Running them"); bench-full is the sweep behind it.
bench: services tools
	$(BIN)/python -m bench all --quick

bench-full: services tools
	$(BIN)/python -m bench all

# A 3-node RabbitMQ cluster on this machine (ol1..ol3@localhost, AMQP on 5681..5683) beside the broker on 5672;
# see the top of scripts/cluster.
cluster:
	scripts/cluster start

cluster-stop:
	scripts/cluster stop

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) site .coverage .coverage.* .mypy_cache .pytest_cache .ruff_cache *.egg-info examples/shop/*.egg-info
