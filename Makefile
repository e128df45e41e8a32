# vma-tool: nothing to build; these targets run the tests, the demo and the benchmarks.
PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
N ?= 2000

.PHONY: test demo bench bench-dedup fuzz install uninstall

test:
	$(PYTHON) tests/run.py

demo:
	$(PYTHON) tests/demo.py

bench:
	$(PYTHON) tests/bench.py

bench-dedup:
	$(PYTHON) tests/bench_dedup.py

fuzz:
	$(PYTHON) tests/fuzz.py --cases $(N)

install:
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 vma-tool $(DESTDIR)$(PREFIX)/bin/vma-tool
	@echo "installed $(PREFIX)/bin/vma-tool. To optimize every backup, add this line to /etc/vzdump.conf:"
	@echo "    script: $(PREFIX)/bin/vma-tool"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/vma-tool
