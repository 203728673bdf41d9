"""Candidates: the ways a tile can be segmented (registry), the cheap pass's selector
features, and one tile through the models; imported by the pipeline and by selector
training alike."""
