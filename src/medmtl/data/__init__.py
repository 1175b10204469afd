"""The data layer: readers -> record tables -> decode cache -> duplicates -> splits -> datasets."""
