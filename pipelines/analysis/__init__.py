"""From finished runs to tables: collection, paired statistics, the per-method comparison and the claims,
the learning-rate frontier, the long horizon, the stress tables and the traced memory. Never imports the report."""
