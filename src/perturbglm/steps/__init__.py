"""Pipeline steps: plain functions of (a gene block, input arrays, the run's Context) that
return arrays (comparisons x genes), independent of how a runner calls them."""
