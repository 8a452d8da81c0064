"""Recipes: complete jobs built on the library (``tokenrl quickstart``). The library never
imports them; they import the library like any user's script would."""
