"""Retention for everything turnout keeps: rules by tenant × task (``rules``), the background
purge that enforces them (``purge``), and the page a privacy reviewer signs (``show``)."""
