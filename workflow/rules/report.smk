# Aggregation of every run into the paper's tables, the claims, figures and the manuscript.


def report_outputs():
    return all_metrics()
