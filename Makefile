# Common tasks. `make install` then `make test` is the whole set-up.
PYTHON ?= python
DATA ?= PetImages

.PHONY: install test demo bench clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q

# The product's commands on $(DATA), ending with heat maps of the worst test mistakes; fetches the PetImages download when it is missing.
demo:
	@if [ ! -d "$(DATA)" ]; then \
	  if [ "$(notdir $(DATA))" = "PetImages" ]; then \
	    echo "$(DATA) is missing: downloading Microsoft's Kaggle Cats and Dogs archive (787 MB)"; \
	    catsdogs download --dest "$(or $(patsubst %/,%,$(dir $(DATA))),.)" || exit 1; \
	  else \
	    echo "$(DATA) is missing: get PetImages with 'catsdogs download' (or from https://www.microsoft.com/en-us/download/details.aspx?id=54765) and pass DATA=path/to/PetImages"; exit 1; \
	  fi; \
	fi
	catsdogs split $(DATA)
	catsdogs train --optim adam
	catsdogs evaluate
	catsdogs plot-curves
	catsdogs explain --mistakes 8

# The speed benchmarks on $(DATA) (class folders) and on the split of it in data/ (`catsdogs split $(DATA)` first).
bench:
	$(PYTHON) benchmarks/bench_split.py --data $(DATA)
	$(PYTHON) benchmarks/bench_train.py --data data

clean:
	rm -rf build dist *.egg-info .pytest_cache
