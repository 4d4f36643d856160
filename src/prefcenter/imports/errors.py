"""Errors of imports: a file that cannot be read as any known layout, a body that is no CSV."""

from prefcenter.problems import Problem, Unprocessable


class UnreadableImport(Unprocessable):
    slug = "unreadable-import"
    title = "The import file cannot be read"


class UnsupportedImportMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
