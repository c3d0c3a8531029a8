"""Training the small synthetic-video Keye model (issue 7): data from the inference path, one train loop."""
