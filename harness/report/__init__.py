"""Reports people look at: a race's timeline (as data, as terminal lanes) and the HTML page."""
