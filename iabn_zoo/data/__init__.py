"""Images and data sets: opening any image as RGB, transforms (the authors' recipes), ImageFolder data sets,
class-name lists (`label_files/`), segmentation data sets (three layouts, masks, joint transforms).
May import: errors, system."""
