.PHONY: demo test setup lint bench
demo:
	scripts/setup.sh
	.venv/bin/safegw demo $(ARGS)
test:
	scripts/test.sh
setup:
	scripts/setup.sh --test
lint:
	.venv/bin/ruff check . && .venv/bin/mypy gateway drivers rules uplink central simulators northbound
bench:
	for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b | tail -n1; done
