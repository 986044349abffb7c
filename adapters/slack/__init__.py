"""The Slack adapter: Slack events in, mrkdwn replies out."""
