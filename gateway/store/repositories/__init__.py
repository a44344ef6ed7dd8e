"""One repository module per aggregate, each running compiled statements on the unit of work's cursor."""
