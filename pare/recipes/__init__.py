from pare.recipes.schema import Recipe, builtin_recipes, load_recipe, recipe_from_dict

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "builtin_recipes"]
