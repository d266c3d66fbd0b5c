-- Which provider of the campaign's chain produced each render (the primary or a fallback).
ALTER TABLE renders ADD COLUMN served_by text;
ALTER TABLE outputs ADD COLUMN served_by text;
