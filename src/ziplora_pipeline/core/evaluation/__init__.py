"""Generation, judges, image metrics, verdicts, claims, reports and figures."""
