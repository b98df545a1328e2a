"""Data-set and attention analysis (paper §1, Table 1, Fig. 1, 5, 7, 10): streaming class
statistics per height and width, and their figures. The command line is
``python -m hanet_fast.analyze``."""

from hanet_fast.analysis.statistics import (PAPER_CLASSES, PAPER_TABLE1, REGIONS, ClassDistribution, Table1, entropy,
                                            format_table1, region_of_rows)

__all__ = ["PAPER_CLASSES", "PAPER_TABLE1", "REGIONS", "ClassDistribution", "Table1", "entropy", "format_table1",
           "region_of_rows"]
