"""Outputs of harken: the store, MQTT, webhooks and the live API, behind one dispatcher."""
