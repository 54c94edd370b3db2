"""The declared fabric as plain data: sites, DCI links, link settings, their validation and units."""
