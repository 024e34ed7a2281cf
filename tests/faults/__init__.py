"""The fault suite: whole deployments attacked, their histories checked (issue #10)."""
