"""kvsnap: verified point-in-time backups of Cloudflare Workers KV."""

__version__ = "0.1.0"
