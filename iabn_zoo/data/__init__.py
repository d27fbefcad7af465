"""Images and data sets: opening any image as RGB, transforms (the authors' recipes), ImageFolder data sets and
class-name lists (`label_files/`). May import: errors, system."""
