"""Datasets, corpora and the synthetic world: everything that turns files into QAExamples and Passages."""
