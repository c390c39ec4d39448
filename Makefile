.PHONY: demo test setup lint bench deb offline-bundle
demo:
	scripts/setup.sh
	.venv/bin/safegw demo $(ARGS)
test:
	scripts/test.sh
setup:
	scripts/setup.sh --test
lint:
	.venv/bin/ruff check . && .venv/bin/mypy gateway drivers rules uplink central simulators northbound tests bench scripts
bench:
	# footprint's default is the issue's full matrix (about an hour): make bench runs a short form
	for b in bench/*.py; do echo "== $$b"; args=""; \
	  [ "$$b" = bench/footprint.py ] && args="--plants demo,10000 --services none --runs 1 --steady 20 --growth 60"; \
	  .venv/bin/python $$b $$args | tail -n1; done
deb:
	# dist/safegw_<version>_amd64.deb: /opt/safegw venv on Debian's python3 (docs/packaging.md)
	/usr/bin/python3 scripts/build_deb.py
offline-bundle:
	# dist/safegw-offline_<version>_amd64.tar: the .deb, the optional servers and their
	# dependencies a bare Debian 12 lacks, with install.sh (docs/packaging.md, "Offline bundle")
	/usr/bin/python3 scripts/build_bundle.py
