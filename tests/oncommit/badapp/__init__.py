"""An app whose tasks module declares a bad binding: django.setup() must refuse to start."""
