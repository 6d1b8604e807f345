"""Everything that renders a run's results: the text of the reports and Table IV and III
(``tables``), the defense comparison's tables (``comparison_table``), the seed-003 table
(``trajectory_table``), the figures (``figures``), the page of a run or a grid (``page``) with
its gallery of attacked images (``gallery``), K's page (``k_page``), and ``writer``, the one
module that writes every output file.  These modules lay out what a run computed and saved;
they run no attack (the galleries only put the few images they show through K again).
"""
