"""What a run saves and reads back: the records and their fingerprints (``records``), the
gray-box attack store (``attack_store``), the adaptive attack store (``adaptive_store``), the
cache of the defenses' observations (``observations``) and a finished run's folder read back
for its page (``run_folder``).  Everything here reads and writes records; nothing here runs an
evaluation or lays out a report.
"""
