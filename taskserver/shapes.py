"""Wire shapes defined once: each field's name, where its value comes from and its documented type.

Calling a ``Shape`` builds the dict an answer carries, directly (these are on the hot path, where marshmallow's
``dump`` would cost several times as much); its ``schema`` is the marshmallow schema that documents the same fields in
the OpenAPI document (``api/responses.py``)."""

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from marshmallow import Schema, fields


@dataclass(frozen=True)
class Field:
    """One field: ``source`` is an attribute (or key) name, a function of the object shown, or None when the caller
    gives the value; ``convert`` applies to a named value (``present.iso`` for times); ``doc`` documents it."""

    source: Any
    doc: fields.Field
    convert: Any = None


def text(source=None, nullable=False, convert=None, **metadata):
    return Field(source, fields.String(allow_none=nullable, **_meta(metadata)), convert)


def integer(source=None, nullable=False, **metadata):
    return Field(source, fields.Integer(allow_none=nullable, **_meta(metadata)))


def boolean(source=None):
    return Field(source, fields.Boolean())


def strings(source=None, nullable=False, **metadata):
    return Field(source, fields.List(fields.String(), allow_none=nullable, **_meta(metadata)))


def number(source=None, nullable=False, **metadata):
    return Field(source, fields.Float(allow_none=nullable, **_meta(metadata)))


def mapping(source=None, nullable=False, **metadata):
    return Field(source, fields.Dict(allow_none=nullable, **_meta(metadata)))


def nested(shape):
    """Another shape, read from the same object."""
    return Field(shape, fields.Nested(shape.schema))


def given(shape, nullable=False, **metadata):
    """One of another shape, given by the caller."""
    return Field(None, fields.Nested(shape.schema, allow_none=nullable, **_meta(metadata)))


def listing(shape):
    """A list of another shape, given by the caller."""
    return Field(None, fields.List(fields.Nested(shape.schema)))


def _meta(metadata):
    return {"metadata": metadata} if metadata else {}


class Shape:
    """An ordered set of fields read from one object (its attributes, or its keys with ``reads=itemgetter``); fields
    the caller gives come last. ``extend`` adds fields after those of an existing shape."""

    def __init__(self, name, /, reads=attrgetter, **shape_fields):  # a field may be called "name"
        self.name = name
        self.reads = reads
        self.fields = shape_fields
        self.schema = Schema.from_dict({key: field.doc for key, field in shape_fields.items()}, name=f"{name}Schema")
        self._readers = tuple((key, self._reader(field)) for key, field in shape_fields.items() if field.source)
        self._given = [key for key, field in shape_fields.items() if not field.source]
        if list(shape_fields)[len(self._readers) :] != self._given:
            raise ValueError(f"{name}: the fields the caller gives must come last")

    def extend(self, name, /, **more):
        """A shape with this one's fields, then ``more``."""
        return Shape(name, self.reads, **self.fields, **more)

    def _reader(self, field):
        if callable(field.source):
            return field.source
        read = self.reads(field.source)
        if field.convert is None:
            return read
        convert = field.convert
        return lambda shown: convert(read(shown))

    def __call__(self, shown, **given):
        """The dict of ``shown`` in this shape; ``given`` supplies the fields it cannot read."""
        answer = {key: read(shown) for key, read in self._readers}
        if given:
            answer.update(given)
        return answer
