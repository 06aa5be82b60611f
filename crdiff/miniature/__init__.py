"""The miniature: a digits text-to-image model of SD's classes that crdiff trains, ships and studies."""
