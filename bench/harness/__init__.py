"""Library code shared by every method: data, training loop, evaluation, throughput, results."""
