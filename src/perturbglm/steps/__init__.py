"""Pipeline steps: plain functions of (block, inputs, context) -> arrays, comparisons x genes,
that do not depend on how a runner calls them (DESIGN.md section 4)."""
