"""From received instances to a job: study completeness (quiet period) and series selection.

Everything here reads and writes the database only, so a restarted node (killed or not) picks
up exactly where the previous one stood.
"""
